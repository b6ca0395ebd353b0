"""Secure Boot refusal, for real: a small GPT disk whose ESP holds an unsigned EFI program
(the host's `grub-mkimage -O x86_64-efi`, no kernel needed). Under `--machine-firmware
uefi-secureboot` (OVMF's Secure Boot build, Microsoft's keys enrolled) the firmware refuses it
and the harness says so within seconds; under plain `--machine-firmware uefi` the very same
disk runs (grub prints a line and powers the VM off), so the refusal is Secure Boot's doing."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.boot

RAN = "KAIROS-TEST-UNSIGNED-GRUB-RAN"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


@pytest.fixture(scope="module")
def unsigned_efi_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 34 MiB GPT disk, one ESP (from sector 2048) with EFI/BOOT/BOOTX64.EFI = an unsigned
    grub that prints RAN and halts."""
    folder = tmp_path_factory.mktemp("unsigned-efi")
    config = folder / "early.cfg"
    config.write_text(f"echo {RAN}\nhalt\n")
    program = folder / "BOOTX64.EFI"
    subprocess.run(
        [
            "grub-mkimage",
            "-O",
            "x86_64-efi",
            "-p",
            "/EFI/BOOT",
            "-c",
            str(config),
            "-o",
            str(program),
            "echo",
            "halt",
        ],
        check=True,
    )
    esp = folder / "esp.img"
    subprocess.run(
        ["mkfs.vfat", "-C", "-n", "ESP", str(esp), str(32 * 1024)], check=True, capture_output=True
    )
    subprocess.run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], check=True)
    subprocess.run(["mcopy", "-i", str(esp), str(program), "::/EFI/BOOT/BOOTX64.EFI"], check=True)
    disk = folder / "unsigned.raw"
    with disk.open("wb") as out:
        out.truncate(34 << 20)
    subprocess.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk)],
        check=True,
        input=f"label: gpt\nstart=2048, size=65536, type={ESP_TYPE}, name=ESP\n",
        text=True,
    )
    subprocess.run(
        ["dd", f"if={esp}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc", "status=none"], check=True
    )
    return disk


def test_secure_boot_refuses_an_unsigned_efi_program_and_the_harness_says_so(unsigned_efi_disk: Path) -> None:
    began = time.monotonic()
    result = run_cli(
        "boot",
        str(unsigned_efi_disk),
        "--machine-firmware",
        "uefi-secureboot",
        "--timeout",
        "240",
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "Secure Boot refused the image" in result.stderr
    assert "Access Denied" in result.stderr  # the firmware's own words, quoted
    assert time.monotonic() - began < 120  # stopped at the refusal, not at the deadline
    log = unsigned_efi_disk.with_name(unsigned_efi_disk.name + ".uefi-secureboot.boot.log")
    assert RAN not in log.read_text(errors="replace")


def test_the_same_disk_runs_without_secure_boot(unsigned_efi_disk: Path) -> None:
    result = run_cli(
        "boot", str(unsigned_efi_disk), "--machine-firmware", "uefi", "--timeout", "240", timeout=300
    )
    assert result.returncode == 1  # it is no Kairos system: it prints no boot report
    assert "QEMU exited" in result.stderr and "Secure Boot" not in result.stderr
    log = unsigned_efi_disk.with_name(unsigned_efi_disk.name + ".uefi.boot.log")
    assert RAN in log.read_text(errors="replace")
