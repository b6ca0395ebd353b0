"""The identity of a dir: base: what the tree holds, not where it lies or how its folders grew."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kairos_build.source.resolve import _tree_fingerprint


def make_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    (root / "bin").symlink_to("usr/bin")
    (root / "etc").mkdir()
    # A folder that once held many files is bigger on ext4 than a fresh copy of it.
    for index in range(300):
        (root / "etc" / f"file-{index:03d}-with-a-long-name").write_text("")
    for index in range(300):
        (root / "etc" / f"file-{index:03d}-with-a-long-name").unlink()
    (root / "etc/os-release").write_text("ID=debian\n")


def test_a_copy_elsewhere_is_the_same_base(tmp_path: Path) -> None:
    make_tree(tmp_path / "a")
    subprocess.run(["cp", "-a", str(tmp_path / "a"), str(tmp_path / "elsewhere")], check=True)
    assert (tmp_path / "a/etc").stat().st_size != (tmp_path / "elsewhere/etc").stat().st_size
    assert _tree_fingerprint(tmp_path / "a") == _tree_fingerprint(tmp_path / "elsewhere")


def test_folders_and_links_to_folders_count(tmp_path: Path) -> None:
    make_tree(tmp_path / "a")
    before = _tree_fingerprint(tmp_path / "a")
    (tmp_path / "a/srv").mkdir()
    with_folder = _tree_fingerprint(tmp_path / "a")
    (tmp_path / "a/bin").unlink()
    (tmp_path / "a/bin").symlink_to("usr/sbin")  # a link to a folder, retargeted
    retargeted = _tree_fingerprint(tmp_path / "a")
    assert len({before, with_folder, retargeted}) == 3
