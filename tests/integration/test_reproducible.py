"""Same inputs, same bytes: two builds of one tree, from two places, into two output
directories, with two empty caches and a different wall clock, give the same sha256 for the
ISO, the raw disk, the qcow2, the vmdk, the vhd and the converted OCI image."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


def build(tree: Path, cache: Path, out: Path) -> dict[str, str]:
    """`build --format iso,raw,qcow2,vmdk,vhd` and `convert -o oci-archive:`; sha256 by format."""
    result = run_cli("build", "--format", "iso,raw,qcow2,vmdk,vhd", "--base", f"dir:{tree}",
                     "--output", str(out), "--cache-dir", str(cache), env=EPOCH)
    assert result.returncode == 0, result.stderr[-4000:]
    sums = {p.name.rsplit(".", 2)[-2]: p.read_text().split()[0] for p in out.glob("*.sha256")}
    for fmt, digest in sums.items():  # the .sha256 files tell the truth
        artifact = next(out.glob(f"*.{fmt}"))
        if fmt not in ("raw", "vhd"):  # 7 GiB, sparse: hashed by the build, trusted here
            assert hashlib.file_digest(artifact.open("rb"), "sha256").hexdigest() == digest
    archive = out / "converted.oci.tar"
    result = run_cli("convert", f"dir:{tree}", "--output", f"oci-archive:{archive}",
                     "--cache-dir", str(cache), env=EPOCH)
    assert result.returncode == 0, result.stderr[-4000:]
    sums["oci-archive"] = hashlib.file_digest(archive.open("rb"), "sha256").hexdigest()
    return sums


def test_two_builds_give_bit_identical_artifacts(probe_tree: Path, tmp_path: Path) -> None:
    # The second build reads a copy of the tree somewhere else: where the base lives is not
    # an input. cp -a keeps the files' dates; shutil would read /dev/full forever.
    copy = tmp_path / "elsewhere" / "tree"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", "--reflink=auto", str(probe_tree), str(copy)], check=True)
    first = build(probe_tree, tmp_path / "cache-1", tmp_path / "out-1")
    time.sleep(2)  # a different wall clock for every tool of the second build
    second = build(copy, tmp_path / "cache-2", tmp_path / "out-2")
    assert set(first) == {"iso", "raw", "qcow2", "vmdk", "vhd", "oci-archive"}
    assert first == second
