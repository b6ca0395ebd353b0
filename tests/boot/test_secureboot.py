"""Secure Boot's negative control. The positive boots under OVMF's Secure Boot build with
Microsoft's keys enrolled live beside the other boots of the same artifacts: the ISO as a CD
and as a USB disk (test_boot_iso), the raw disk (test_boot_disk), bookworm's raw disk
(test_boot_bookworm). Here the same raw disk with an unsigned grub in place of the signed one
must be refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.boot


def esp_offset(disk: Path) -> int:
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]
    esp = next(p for p in table["partitions"] if p["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
    return int(esp["start"]) * 512


def test_the_same_disk_with_an_unsigned_grub_is_refused(
    built_disks: tuple[dict[str, Path], str], tmp_path: Path
) -> None:
    """Negative control: what made the boots above pass is the signatures, not the firmware
    settings. shim verifies the grub it starts; an unsigned one (the build host's grub-mkimage,
    as every UEFI artifact had before) must not run."""
    disk = tmp_path / "unsigned-grub.raw"
    subprocess.run(
        ["cp", "--sparse=always", "--reflink=auto", str(built_disks[0]["raw"]), str(disk)], check=True
    )
    unsigned = tmp_path / "grubx64.efi"
    subprocess.run(
        [
            "grub-mkimage",
            "-O",
            "x86_64-efi",
            "-p",
            "/EFI/debian",
            "-o",
            str(unsigned),
            "normal",
            "linux",
            "search",
            "configfile",
            "part_gpt",
            "fat",
            "ext2",
        ],
        check=True,
    )
    subprocess.run(
        ["mcopy", "-o", "-i", f"{disk}@@{esp_offset(disk)}", str(unsigned), "::/EFI/BOOT/grubx64.efi"],
        check=True,
    )
    try:
        result = run_cli(
            "boot", str(disk), "--machine-firmware", "uefi-secureboot", "--timeout", "300", timeout=420
        )
        assert result.returncode == 1, result.stderr[-2000:]
        assert "Secure Boot refused the image" in result.stderr, result.stderr[-2000:]
        assert "KAIROS-BOOT-REPORT" not in result.stderr
        # Refused before any kernel ran (the harness stops at the firmware's words).
        log = next(tmp_path.glob("*.uefi-secureboot.boot.log")).read_text(errors="replace")
        assert "Linux version" not in log
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
