"""A non-default --compression really lands in the ISO's squashfs, and xz really gets the
arch's BCJ filter (both read back by unsquashfs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kairos_build.disk.squashfs import Compression, make_squashfs
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def superblock(squashfs: Path) -> str:
    return subprocess.run(
        ["unsquashfs", "-s", str(squashfs)], check=True, capture_output=True, text=True
    ).stdout


def test_a_non_default_compression_lands_in_the_iso(test_cache: Path, tmp_path: Path) -> None:
    # lz4, not xz: the same path through the CLI, the cache key and mksquashfs, in seconds
    # rather than minutes on two cores.
    out = tmp_path / "out"
    result = run_cli(
        "iso",
        "--flavor",
        "debian",
        "--base",
        "bootstrap:debian/trixie",
        "--compression",
        "lz4",
        "--output",
        str(out),
        "--cache-dir",
        str(test_cache),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # Made now, or kept from an earlier run (the squashfs or the whole ISO): what counts is
    # what the ISO holds.
    assert any(
        line in result.stderr
        for line in (
            "making the squashfs (lz4)",
            "reusing cached squashfs lz4",
            "reusing the cached artifact",
        )
    ), result.stderr[-3000:]
    iso = next(out.glob("*.iso"))
    squashfs = tmp_path / "rootfs.squashfs"
    subprocess.run(
        ["xorriso", "-indev", str(iso), "-osirrox", "on", "-extract", "/rootfs.squashfs", str(squashfs)],
        check=True,
        capture_output=True,
    )
    assert "Compression lz4" in superblock(squashfs)


@pytest.mark.parametrize(("arch", "bcj"), [("amd64", "x86"), ("arm64", "arm")])
def test_xz_gets_the_bcj_filter_of_the_arch(tmp_path: Path, arch: str, bcj: str) -> None:
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/tool").write_bytes(bytes(range(256)) * 64)
    make_squashfs(tree, tmp_path / "fs.squashfs", Compression.parse("xz", arch), epoch=1700000000)
    found = superblock(tmp_path / "fs.squashfs")
    assert "Compression xz" in found and f"Filters selected: {bcj}" in found, found
