"""Debian bookworm end to end: bootstrapped, converted for real, checked (systemd 252 is too
old for Trusted Boot, fine for Secure Boot), and booted from a raw disk with the immutable
layout."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.boot


@pytest.fixture(scope="module")
def bookworm_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache of this module's own: bookworm's stages (3 GB) serve no other module, and CI's
    disk is shared and small, so they go when the module is done."""
    cache = tmp_path_factory.mktemp("bookworm-cache")
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="module")
def bookworm_tree(bookworm_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tree = tmp_path_factory.mktemp("bookworm") / "tree"
    result = run_cli(
        "convert",
        "bootstrap:debian/bookworm",
        "--release",
        "bookworm",
        "--output",
        f"dir:{tree}",
        "--cache-dir",
        str(bookworm_cache),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    yield tree
    shutil.rmtree(tree.parent, ignore_errors=True)  # CI's disk is shared: free it once checked


def test_bookworm_fails_trusted_boot_on_its_systemd_and_passes_secure_boot(
    bookworm_tree: Path, bookworm_cache: Path
) -> None:
    trusted = run_cli(
        "check",
        str(bookworm_tree),
        "--mode",
        "trusted",
        "--release",
        "bookworm",
        "--json",
        "--cache-dir",
        str(bookworm_cache),
    )
    assert trusted.returncode == 3, trusted.stderr
    rules = {r["name"]: r for r in json.loads(trusted.stdout)["rules"]}
    assert rules["systemd >= 256"]["ok"] is False
    assert rules["systemd >= 256"]["detail"] == "systemd 252 < 256"
    assert "libsystemd-shared-252" in rules["systemd >= 256"]["evidence"]
    secure = run_cli(
        "check",
        str(bookworm_tree),
        "--mode",
        "secureboot",
        "--release",
        "bookworm",
        "--cache-dir",
        str(bookworm_cache),
    )
    assert secure.returncode == 0, secure.stdout + secure.stderr
    assert "secureboot passes" in secure.stdout


def test_bookworm_raw_disk_boots_immutable(bookworm_tree: Path, bookworm_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    built = run_cli(
        "raw",
        "--release",
        "bookworm",
        "--base",
        f"dir:{bookworm_tree}",
        "--firmware",
        "uefi",
        "--output",
        str(out),
        "--cache-dir",
        str(bookworm_cache),
    )
    assert built.returncode == 0, built.stderr[-4000:]
    disk = next(out.glob("kairos-debian-12-*.raw"))
    # Under enforced Secure Boot: bookworm's own signed chain (shim 15.8, grub 2.06 with its
    # memdisk config and TPM verifier, kernel 6.1), where trixie's disks boot plain UEFI.
    result = run_cli(
        "boot", str(disk), "--machine-firmware", "uefi-secureboot", "--timeout", "480", "--json", timeout=660
    )
    assert result.returncode == 0, result.stderr[-4000:]
    fields = json.loads(result.stdout)["fields"]
    # Healthy on cloud-init 22.x too: no cloud-config, so it stays out.
    assert fields["state"] == "running" and fields["failed"] == "none", fields
    assert fields["entry"] == "active" and fields["secureboot"] == "enabled"
    assert fields["flavor"] == "debian"
    assert fields["root_mode"] == "ro" and fields["image"] == "/cOS/active.img"
    assert fields["etc"] == "overlay" and fields["persistent"] == "yes"
