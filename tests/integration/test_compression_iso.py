"""A non-default --compression really lands in the ISO's squashfs (read back by unsquashfs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def test_xz_with_the_x86_bcj_filter_lands_in_the_iso(test_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("iso", "--flavor", "debian", "--base", "bootstrap:debian/trixie",
                     "--compression", "xz", "--output", str(out), "--cache-dir", str(test_cache))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "making the squashfs (xz+x86)" in result.stderr or "reusing cached squashfs" in result.stderr
    iso = next(out.glob("*.iso"))
    squashfs = tmp_path / "rootfs.squashfs"
    subprocess.run(["xorriso", "-indev", str(iso), "-osirrox", "on", "-extract",
                    "/rootfs.squashfs", str(squashfs)], check=True, capture_output=True)
    superblock = subprocess.run(["unsquashfs", "-s", str(squashfs)], check=True,
                                capture_output=True, text=True).stdout
    assert "Compression xz" in superblock, superblock
    assert "Filters selected: x86" in superblock, superblock
