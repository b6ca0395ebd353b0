"""Build the netboot directory from the real trixie and boot it over HTTP under SeaBIOS and
OVMF: QEMU's iPXE ROM fetches boot.ipxe, the kernel and initrd from an HTTP server on
127.0.0.1 (QEMU's user-mode network, restricted to that one forwarded address), and the
initramfs (dracut livenet) downloads rootfs.squashfs and boots it as its live root, settling
healthy (systemd `running`, no failed unit) on the `netboot` entry. Under Secure Boot the
firmware refuses the kernel iPXE fetched, and the harness says so at once."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.boot

FILES = {"vmlinuz", "initrd", "rootfs.squashfs", "boot.ipxe", "SHA256SUMS"}


@pytest.fixture(scope="module")
def netboot_dir(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("netboot-out")
    result = run_cli(
        "netboot",
        "--flavor",
        "debian",
        "--base",
        "bootstrap:debian/trixie",
        "--output",
        str(out),
        "--cache-dir",
        str(test_cache),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    name = "kairos-debian-13-core-amd64-generic-v0.1.0-netboot"
    # The folder, and its SBOM and build manifest beside it.
    assert sorted(p.name for p in out.iterdir()) == [name, f"{name}.build.json", f"{name}.spdx.json"]
    yield out / name
    shutil.rmtree(out, ignore_errors=True)  # CI's disk is shared: free it once checked


def test_the_netboot_directory_holds_the_boot_files_and_their_checksums(netboot_dir: Path) -> None:
    assert {p.name for p in netboot_dir.iterdir()} == FILES
    listed = {}
    for line in (netboot_dir / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    assert set(listed) == FILES - {"SHA256SUMS"}
    for name, digest in listed.items():
        assert hashlib.sha256((netboot_dir / name).read_bytes()).hexdigest() == digest, name
    assert (netboot_dir / "rootfs.squashfs").read_bytes()[:4] == b"hsqs"
    assert (netboot_dir / "vmlinuz").read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    script = (netboot_dir / "boot.ipxe").read_text()
    assert script.startswith("#!ipxe\n") and "root=live:${kairos-dir}/rootfs.squashfs" in script


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_netboot_reaches_multi_user_on_the_squashfs_fetched_over_http(
    netboot_dir: Path, firmware: str
) -> None:
    result = run_cli(
        "boot", str(netboot_dir), "--machine-firmware", firmware, "--timeout", "480", "--json", timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert report["firmware"] == firmware
    assert report["fields"]["flavor"] == "debian"
    assert report["fields"]["live"] == "squashfs"  # the downloaded squashfs is the lower root
    assert report["fields"]["root"] == "overlay"
    assert (report["state"], report["failed"], report["entry"]) == ("running", [], "netboot")
    assert report["secureboot"] == {"bios": "unsupported", "uefi": "disabled"}[firmware]
    console = Path(report["log_path"]).read_text(errors="replace")
    assert "root=live:http://10.0.2.100/boot.ipxe/../rootfs.squashfs" in console
    # Every file came over HTTP from the harness's server, the squashfs by the initramfs.
    http_log = netboot_dir.parent / f"{netboot_dir.name}.{firmware}.http.log"
    requests = http_log.read_text()
    for name in ("boot.ipxe", "vmlinuz", "initrd", "rootfs.squashfs"):
        assert f'"GET /{name} HTTP/1.1" 200' in requests, requests


def test_netboot_under_secure_boot_is_refused_with_a_clear_message(netboot_dir: Path) -> None:
    """QEMU's iPXE fetches boot.ipxe and the kernel, then asks the firmware to run the kernel:
    Debian's kernel is signed by Debian, not by a key OVMF's Microsoft db trusts, so it is
    refused ("Exec format error")."""
    began = time.monotonic()
    result = run_cli(
        "boot", str(netboot_dir), "--machine-firmware", "uefi-secureboot", "--timeout", "300", timeout=400
    )
    assert result.returncode == 1, result.stderr[-4000:]
    assert "Secure Boot refused the network boot" in result.stderr
    assert "Could not boot image" in result.stderr
    assert time.monotonic() - began < 240
