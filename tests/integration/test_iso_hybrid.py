"""The ISO as a hybrid (CD and disk), its cloud-config, `inject`, ISO overlays, and a squashfs
over 4 GiB; checked with xorriso (libisofs), fdisk/sfdisk and mtools."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import time
from pathlib import Path

import pycdlib
import pytest

from kairos_build.disk.iso9660 import write_iso
from tests.conftest import run_cli
from tests.imagefiles import file_digest

pytestmark = pytest.mark.integration
CONFIG = "#cloud-config\nhostname: first\n"


def sh(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def iso_file(iso: Path, path: str) -> bytes:
    reader = pycdlib.PyCdlib()
    reader.open(str(iso))
    try:
        with reader.open_file_from_iso(joliet_path=path) as handle:
            return bytes(handle.read())
    finally:
        reader.close()


def test_system_area_has_grub_mbr_and_a_gpt_with_the_esp(built_iso: tuple[Path, str]) -> None:
    iso = built_iso[0]
    report = sh("xorriso", "-indev", str(iso), "-report_system_area", "plain", "-report_el_torito", "plain")
    assert "grub2-mbr" in report and "GPT" in report
    assert "El Torito boot img :   1  BIOS" in report and "El Torito boot img :   2  UEFI" in report
    assert "boot-info-table grub2-boot-info" in report
    assert "28732ac11ff8d211ba4b00a0c93ec93b" in report  # the EFI system partition type
    listing = sh("fdisk", "-l", str(iso))
    assert "Disklabel type: gpt" in listing and "EFI System" in listing
    sh("sfdisk", "--verify", str(iso))


def test_appended_esp_is_the_el_torito_esp_and_holds_grub(
    built_iso: tuple[Path, str], probe_tree: Path, tmp_path: Path
) -> None:
    iso = built_iso[0]
    dump = sh("sfdisk", "--dump", str(iso))
    line = next(row for row in dump.splitlines() if "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in row)
    start = int(line.split("start=")[1].split(",")[0]) * 512
    with iso.open("rb") as handle:
        handle.seek(start)
        inside = iso_file(iso, "/boot/uefi.img")
        assert handle.read(len(inside)) == inside
    esp = tmp_path / "esp.img"
    esp.write_bytes(inside)
    assert "BOOTX64  EFI" in sh("mdir", "-i", str(esp), "::/EFI/BOOT")
    # MBR: grub's hybrid boot code pointing at the El Torito image's core (LBA x 4 + 4).
    mbr = iso.read_bytes()[:512]
    hybrid = (probe_tree / "usr/lib/grub/i386-pc/boot_hybrid.img").read_bytes()  # the image's grub
    assert mbr[:0x1B0] == hybrid[:0x1B0] and mbr[510:] == b"\x55\xaa"
    lba = int(
        next(
            r
            for r in sh("xorriso", "-indev", str(iso), "-report_el_torito", "plain").splitlines()
            if "El Torito boot img :   1" in r
        ).split()[-1]
    )
    assert struct.unpack_from("<Q", mbr, 0x1B0)[0] == lba * 4 + 4


def test_grub_menu_entries(built_iso: tuple[Path, str]) -> None:
    menu = iso_file(built_iso[0], "/boot/grub/grub.cfg").decode()
    for entry in ("--id live ", "--id live-config", "--id first-disk", "--id debug"):
        assert entry in menu
    assert "kairos.live_config=/config.yaml" in menu


def test_inject_replaces_the_config_in_seconds_and_keeps_the_squashfs(
    built_iso: tuple[Path, str], tmp_path: Path
) -> None:
    iso = built_iso[0]
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "injected.iso"
    started = time.monotonic()
    result = run_cli("inject", str(iso), "--cloud-config", str(config), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30  # seconds, not a rebuild (about 1 s here)
    assert iso_file(out, "/config.yaml").decode() == CONFIG
    assert file_digest(out, "/rootfs.squashfs") == file_digest(iso, "/rootfs.squashfs")
    assert "grub2-mbr" in sh("xorriso", "-indev", str(out), "-report_system_area", "plain")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert (tmp_path / "injected.iso.sha256").read_text().split()[0] == digest
    # Again, in place: the config is replaced, not added twice.
    config.write_text("#cloud-config\nhostname: second\n")
    assert run_cli("inject", str(out), "--cloud-config", str(config)).returncode == 0
    assert iso_file(out, "/config.yaml").decode() == "#cloud-config\nhostname: second\n"
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("hostname: x\n", "does not start with '#cloud-config'"),
        ("#cloud-config\nusers: [\n", "is not valid YAML"),
    ],
)
def test_inject_refuses_a_bad_config_and_leaves_the_iso_alone(
    built_iso: tuple[Path, str], tmp_path: Path, content: str, message: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(content)
    out = tmp_path / "out.iso"
    result = run_cli("inject", str(built_iso[0]), "--cloud-config", str(config), "-o", str(out))
    assert result.returncode == 2 and message in result.stderr
    assert not out.exists()


def test_inject_refuses_an_iso_it_did_not_make(tmp_path: Path) -> None:
    other = tmp_path / "other.iso"
    sh("xorriso", "-outdev", str(other), "-volid", "SOMETHING", "-map", "/etc/hostname", "/hostname")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    result = run_cli("inject", str(other), "--cloud-config", str(config))
    assert result.returncode == 2 and "is not a Kairos live ISO" in result.stderr
    garbage = tmp_path / "garbage.iso"
    garbage.write_bytes(os.urandom(100000))
    result = run_cli("inject", str(garbage), "--cloud-config", str(config))
    assert result.returncode == 2 and "is not an ISO image" in result.stderr


def test_iso_overlay_and_extra_cmdline(built_iso: tuple[Path, str], test_cache: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    (overlay / "docs" / "Read Me+").mkdir(parents=True)
    (overlay / "docs" / "Read Me+" / "notes for you.txt").write_text("hello")
    (overlay / "docs" / "a-b.txt").write_text("1")
    (overlay / "docs" / "a_b.txt").write_text("2")  # same ISO9660 name as a-b.txt
    out = tmp_path / "out"
    result = run_cli(
        "iso",
        "--base",
        "bootstrap:debian/trixie",
        "--overlay-iso",
        str(overlay),
        "--extra-cmdline",
        "quiet 'kairos.test=a b'",
        "--output",
        str(out),
        "--cache-dir",
        str(test_cache),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    iso = next(out.glob("*.iso"))
    assert iso_file(iso, "/docs/Read Me+/notes for you.txt") == b"hello"
    assert iso_file(iso, "/docs/a-b.txt") == b"1" and iso_file(iso, "/docs/a_b.txt") == b"2"
    assert "quiet 'kairos.test=a b'" in iso_file(iso, "/boot/grub/grub.cfg").decode()

    (overlay / "rootfs.squashfs").write_text("not allowed")
    refused = run_cli(
        "iso",
        "--base",
        "bootstrap:debian/trixie",
        "--overlay-iso",
        str(overlay),
        "--output",
        str(tmp_path / "out2"),
        "--cache-dir",
        str(test_cache),
    )
    assert refused.returncode == 2 and "would replace a file the ISO boots with" in refused.stderr


def test_a_squashfs_over_4_gib_is_stored_in_several_extents(tmp_path: Path) -> None:
    payload = tmp_path / "rootfs.squashfs"
    size = (4 << 30) + (300 << 20)
    with payload.open("wb") as handle:  # sparse: 4.3 GiB that take no space
        handle.truncate(size)
        handle.write(b"HEAD" * 1024)
        handle.seek(size - 4096)
        handle.write(b"TAIL" * 1024)
    small = tmp_path / "boot.img"
    small.write_bytes(b"\0" * 8192)
    iso = tmp_path / "big.iso"
    write_iso({"/boot/grub/bios.img": small, "/boot/uefi.img": small, "/rootfs.squashfs": payload}, iso)
    payload.unlink()
    report = sh("xorriso", "-indev", str(iso), "-find", "/rootfs.squashfs", "-exec", "report_lba")
    extents = [row for row in report.splitlines() if row.startswith("File data lba:")]
    assert len(extents) >= 2 and all(f", {size} ," in row for row in extents)
    # Read both ends back through libisofs (xorriso), an implementation other than ours.
    for offset, expected in ((0, b"HEAD" * 1024), (size - 4096, b"TAIL" * 1024)):
        piece = tmp_path / f"piece-{offset}"
        sh(
            "xorriso",
            "-osirrox",
            "on",
            "-indev",
            str(iso),
            "-extract_cut",
            "/rootfs.squashfs",
            str(offset),
            "4096",
            str(piece),
        )
        assert piece.read_bytes() == expected
    iso.unlink()  # 4.3 GiB written for real: do not keep it in pytest's retained temp dirs
