"""The ISO built from a real trixie rootfs, checked with independent tools (xorriso, mtools,
unsquashfs, fsck.vfat) rather than with the code that wrote it."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

RELEASE_KEYS = (
    "KAIROS_ID",
    "KAIROS_ID_LIKE",
    "KAIROS_NAME",
    "KAIROS_VERSION",
    "KAIROS_RELEASE",
    "KAIROS_ARCH",
    "KAIROS_TARGETARCH",
    "KAIROS_FLAVOR",
    "KAIROS_FLAVOR_RELEASE",
    "KAIROS_FAMILY",
    "KAIROS_MODEL",
    "KAIROS_VARIANT",
    "KAIROS_BUG_REPORT_URL",
    "KAIROS_HOME_URL",
    "KAIROS_FIPS",
    "KAIROS_TRUSTED_BOOT",
)


def xorriso(iso: Path, *args: str) -> str:
    result = subprocess.run(
        ["xorriso", "-indev", str(iso), *args], capture_output=True, text=True, check=True
    )
    return result.stdout + result.stderr


def extract(iso: Path, path: str, dest: Path) -> Path:
    xorriso(iso, "-osirrox", "on", "-extract", path, str(dest))
    return dest


@pytest.fixture(scope="module")
def iso(built_iso: tuple[Path, str]) -> Path:
    return built_iso[0]


def test_named_by_kairos_convention(iso: Path) -> None:
    assert re.fullmatch(r"kairos-debian-13-core-amd64-generic-v\d+\.\d+\.\d+\.iso", iso.name)


def test_el_torito_has_a_bios_and_a_uefi_entry(iso: Path) -> None:
    report = xorriso(iso, "-report_el_torito", "plain")
    entries = re.findall(r"El Torito boot img :\s+\d+\s+(\w+)\s+y\s+none", report)
    assert entries == ["BIOS", "UEFI"], report
    assert "/boot/grub/bios.img" in report and "/boot/uefi.img" in report


def test_volume_label_and_layout(iso: Path) -> None:
    assert re.search(r"Volume Id\s*:\s*COS_LIVE", xorriso(iso, "-pvd_info"))
    listing = xorriso(iso, "-find", "/", "-type", "f")
    for path in ("/boot/kernel", "/boot/initrd", "/rootfs.squashfs", "/boot/grub/grub.cfg", "/boot/uefi.img"):
        assert f"'{path}'" in listing, listing


def mtools_read(image: Path, path: str, dest: Path) -> bytes:
    subprocess.run(["mcopy", "-i", str(image), f"::/{path}", str(dest)], check=True, capture_output=True)
    return dest.read_bytes()


def test_esp_holds_the_images_signed_shim_and_cd_grub(iso: Path, probe_tree: Path, tmp_path: Path) -> None:
    """UEFI boots shim (Microsoft-signed) -> the distro's signed CD grub -> the signed kernel,
    all from the converted rootfs, never a grub made on the build host."""
    esp = extract(iso, "/boot/uefi.img", tmp_path / "uefi.img")
    subprocess.run(["fsck.vfat", "-n", str(esp)], check=True, capture_output=True)
    listing = subprocess.run(
        ["mdir", "-i", str(esp), "-/", "-b", "::/"], check=True, capture_output=True, text=True
    ).stdout.upper()
    assert "FBX64" not in listing  # shim's fallback would add firmware boot entries
    image = {
        "EFI/BOOT/BOOTX64.EFI": "usr/lib/shim/shimx64.efi.signed",
        "EFI/BOOT/grubx64.efi": "usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed",
        "EFI/BOOT/mmx64.efi": "usr/lib/shim/mmx64.efi.signed",
    }
    for on_esp, in_rootfs in image.items():
        assert mtools_read(esp, on_esp, tmp_path / "file") == (probe_tree / in_rootfs).read_bytes(), on_esp
    signers = {
        name: subprocess.run(
            ["sbverify", "--list", str(probe_tree / rel)], capture_output=True, text=True, check=True
        ).stdout
        for name, rel in image.items()
    }
    assert "Microsoft Corporation UEFI CA 2011" in signers["EFI/BOOT/BOOTX64.EFI"]
    assert "Debian Secure Boot" in signers["EFI/BOOT/grubx64.efi"]
    # gcdx64's built-in prefix is /boot/grub: there, a config that finds the ISO by label.
    stub = mtools_read(esp, "boot/grub/grub.cfg", tmp_path / "stub.cfg").decode()
    assert "--label --set=root COS_LIVE" in stub and "configfile ($root)/boot/grub/grub.cfg" in stub
    # The kernel the menu boots is the image's signed one, as is; /.disk/info is what Debian's
    # CD grub searches for when its prefix is missing.
    kernel = extract(iso, "/boot/kernel", tmp_path / "kernel")
    assert kernel.read_bytes() == (probe_tree / "boot/vmlinuz").read_bytes()
    assert (
        "Debian Secure Boot Signer"
        in subprocess.run(
            ["sbverify", "--list", str(kernel)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert extract(iso, "/.disk/info", tmp_path / "info").read_text().startswith("Kairos Debian")


def test_bios_image_is_made_from_the_images_grub(iso: Path, probe_tree: Path, tmp_path: Path) -> None:
    """cdboot.img first, then the image's own LZMA decompressor (stored uncompressed; it
    differs between grub releases, e.g. the host's 2.06 and trixie's 2.12)."""
    bios = extract(iso, "/boot/grub/bios.img", tmp_path / "bios.img").read_bytes()
    modules = probe_tree / "usr/lib/grub/i386-pc"
    cdboot = (modules / "cdboot.img").read_bytes()
    assert bios[64 : len(cdboot)] == cdboot[64:]  # bytes 8-63: the El Torito boot info table
    decompressor = (modules / "lzma_decompress.img").read_bytes()
    assert bios.find(decompressor[0x300:0x600]) > 0
    host = Path("/usr/lib/grub/i386-pc/lzma_decompress.img")
    if host.is_file() and host.read_bytes() != decompressor:
        assert bios.find(host.read_bytes()[0x300:0x600]) == -1


def test_grub_menu_boots_the_live_squashfs_with_a_serial_console(iso: Path, tmp_path: Path) -> None:
    cfg = extract(iso, "/boot/grub/grub.cfg", tmp_path / "grub.cfg").read_text()
    assert "root=live:CDLABEL=COS_LIVE" in cfg
    assert "rd.live.squashimg=rootfs.squashfs" in cfg
    assert re.search(r"console=ttyS0,115200", cfg)
    assert "serial --unit=0" in cfg


def test_squashfs_holds_a_converted_system(iso: Path, tmp_path: Path) -> None:
    squashfs = extract(iso, "/rootfs.squashfs", tmp_path / "rootfs.squashfs")

    def cat(path: str) -> str:
        return subprocess.run(
            ["unsquashfs", "-cat", str(squashfs), path], check=True, capture_output=True, text=True
        ).stdout

    release = dict(line.split("=", 1) for line in cat("etc/kairos-release").splitlines() if "=" in line)
    assert set(RELEASE_KEYS) <= set(release), set(RELEASE_KEYS) - set(release)
    values = {k: v.strip('"') for k, v in release.items()}
    assert values["KAIROS_ID"] == "kairos"
    assert values["KAIROS_VERSION"].startswith("v") and values["KAIROS_RELEASE"] == values["KAIROS_VERSION"]
    assert values["KAIROS_FLAVOR"] == "debian" and values["KAIROS_FLAVOR_RELEASE"] == "13"
    assert values["KAIROS_FAMILY"] == "debian"

    listing = subprocess.run(
        ["unsquashfs", "-lls", str(squashfs)], check=True, capture_output=True, text=True
    ).stdout
    assert re.search(r"squashfs-root/boot/vmlinuz -> vmlinuz-\S+", listing)
    assert re.search(r"squashfs-root/boot/initrd -> initrd.img-\S+", listing)
    assert "squashfs-root/etc/machine-id" not in listing
    assert not re.search(r"etc/ssh/ssh_host_\w+_key", listing)
    assert "kairos-boot-report.service" in listing
    assert len(set(re.findall(r"lib/modules/([^/\s]+)/", listing))) == 1  # exactly one kernel


def test_checksum_file_matches_and_nothing_partial_is_left(iso: Path) -> None:
    line = iso.with_name(iso.name + ".sha256").read_text()
    digest, name = line.split()
    assert name == iso.name
    sha = hashlib.sha256()
    with iso.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            sha.update(chunk)
    assert sha.hexdigest() == digest
    # Only the artifact, its checksum, build manifest and SBOM (boot tests may add their
    # console logs beside them).
    artifacts = sorted(p.name for p in iso.parent.iterdir() if not p.name.endswith(".boot.log"))
    assert artifacts == [iso.name, *(iso.name + s for s in (".build.json", ".sha256", ".spdx.json"))]


def test_the_build_logs_each_timed_step(built_iso: tuple[Path, str]) -> None:
    stderr = built_iso[1]
    for step in ("resolving the base", "exporting iso", "writing the ISO"):
        assert re.search(rf"done: {step}.* \(\d+\.\d s\)", stderr), stderr


def test_a_second_build_reuses_the_converted_rootfs(
    test_cache: Path, tmp_path: Path, built_iso: tuple[Path, str]
) -> None:
    result = run_cli(
        "iso",
        "--flavor",
        "debian",
        "--base",
        "bootstrap:debian/trixie",
        "--output",
        str(tmp_path),
        "--cache-dir",
        str(test_cache),
        "--json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"reusing cached converted", result.stderr)
    assert "installing" not in result.stderr
    assert (tmp_path / built_iso[0].name).is_file()
