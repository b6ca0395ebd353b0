"""The squashfs carries the build epoch, never the wall clock, with or without SOURCE_DATE_EPOCH."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kairos_build.disk.squashfs import Compression, make_squashfs, squashfs_options


def test_exclusion_list_comes_last() -> None:
    options = squashfs_options(Compression(), 1234)
    # mksquashfs reads every word after -e as a path to exclude.
    assert options.index("-mkfs-time") < options.index("-e")
    assert options[options.index("-mkfs-time") + 1] == "1234"


@pytest.mark.parametrize("environment_epoch", [None, "999"])
def test_superblock_and_files_dated_by_the_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environment_epoch: str | None
) -> None:
    if environment_epoch is None:
        monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    else:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", environment_epoch)
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "junk").write_text("runtime")
    (root / "file").write_text("content")
    image = tmp_path / "root.squashfs"
    make_squashfs(root, image, epoch=1234)
    superblock = subprocess.run(
        ["unsquashfs", "-mkfs-time", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert superblock == "1234"
    listing = subprocess.run(
        ["unsquashfs", "-lls", "-UTC", "-d", "", str(image)], capture_output=True, text=True, check=True
    ).stdout
    assert "1970-01-01 00:20" in listing  # 1234 s after the epoch
    assert "/proc/junk" not in listing and "/proc" in listing
