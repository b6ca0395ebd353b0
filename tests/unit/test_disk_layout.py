"""Disk layout arithmetic, size parsing, the BIOS boot patching and the boot expectations."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kairos_build.boot.harness import check_root, default_expectation
from kairos_build.core.errors import InputError
from kairos_build.disk.biosboot import install_bios_grub
from kairos_build.disk.grub import GRUB_LIB
from kairos_build.disk.layout import (
    DiskOptions,
    GiB,
    MiB,
    Partition,
    default_image_size,
    parse_partition_sizes,
    parse_size,
    plan_layout,
    sfdisk_script,
)

ROOTFS = 400 * MiB
RECOVERY = 300 * MiB


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8G", 8 * GiB),
        ("512M", 512 * MiB),
        ("1.5GiB", 3 * GiB // 2),
        ("64MiB", 64 * MiB),
        ("1048576", MiB),
        ("2t", 2 << 40),
        (" 10 M ", 10 * MiB),
        ("4KB", 4096),
    ],
)
def test_sizes_parse(text: str, expected: int) -> None:
    assert parse_size(text, "size") == expected


@pytest.mark.parametrize("text", ["", "big", "8X", "-1G", "1..5G", "G"])
def test_a_size_that_does_not_parse_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(InputError) as err:
        parse_size(text, "--disk-size")
    assert "--disk-size" in err.value.message and "8G" in (err.value.hint or "")


def test_partition_sizes_need_name_equals_size_and_a_known_name() -> None:
    assert parse_partition_sizes(["state=8G", "oem=128M"]) == (("state", 8 * GiB), ("oem", 128 * MiB))
    with pytest.raises(InputError, match="NAME=SIZE"):
        parse_partition_sizes(["state"])
    with pytest.raises(InputError, match="no partition called 'root'"):
        DiskOptions(sizes=(("root", GiB),))
    with pytest.raises(InputError, match="--firmware"):
        DiskOptions(firmware="coreboot")


def test_default_layout_follows_kairos() -> None:
    layout = plan_layout(DiskOptions(), ROOTFS, RECOVERY, seed="s")
    labels = [p.label for p in layout.partitions]
    assert labels == ["COS_GRUB", None, "COS_OEM", "COS_RECOVERY", "COS_STATE", "COS_PERSISTENT"]
    sizes = {p.name: p.size for p in layout.partitions}
    assert sizes["efi"] == 64 * MiB and sizes["oem"] == 64 * MiB and sizes["bios"] == MiB
    assert sizes["recovery"] == 2 * RECOVERY + 200 * MiB
    image = default_image_size(ROOTFS)
    assert image >= ROOTFS + 200 * MiB and layout.image_size == image
    assert sizes["state"] == 3 * image + 1000 * MiB  # active + passive + upgrade + slack
    assert sizes["persistent"] >= 2 * GiB
    assert layout.disk_size % GiB == 0
    # Back to back, MiB-aligned, one MiB before the first and at least one after the last.
    assert layout.partitions[0].start == MiB
    for before, after in zip(layout.partitions, layout.partitions[1:], strict=False):
        assert after.start == before.end and after.start % MiB == 0
    assert layout.partitions[-1].end + MiB <= layout.disk_size


def test_firmware_choice_decides_the_boot_partitions() -> None:
    uefi = [p.name for p in plan_layout(DiskOptions(firmware="uefi"), ROOTFS, RECOVERY, "s").partitions]
    bios = [p.name for p in plan_layout(DiskOptions(firmware="bios"), ROOTFS, RECOVERY, "s").partitions]
    assert "bios" not in uefi and "efi" in uefi
    assert "efi" not in bios and "bios" in bios


def test_a_given_disk_size_gives_the_rest_to_persistent() -> None:
    layout = plan_layout(DiskOptions(disk_size=16 * GiB), ROOTFS, RECOVERY, "s")
    assert layout.disk_size == 16 * GiB
    assert layout.partitions[-1].end == 16 * GiB - MiB


def test_a_disk_too_small_is_refused_with_the_numbers() -> None:
    with pytest.raises(InputError) as err:
        plan_layout(DiskOptions(disk_size=2 * GiB), ROOTFS, RECOVERY, "s")
    assert "2.00 GiB disk is too small" in err.value.message
    assert "MiB fixed" in err.value.message and "--disk-size" in (err.value.hint or "")


def test_an_image_size_smaller_than_the_rootfs_is_refused() -> None:
    with pytest.raises(InputError, match="cannot hold"):
        plan_layout(DiskOptions(image_size=300 * MiB), ROOTFS, RECOVERY, "s")


def test_partition_overrides_are_used() -> None:
    options = DiskOptions(sizes=(("state", 8 * GiB), ("persistent", GiB), ("oem", 100 * MiB)))
    sizes = {p.name: p.size for p in plan_layout(options, ROOTFS, RECOVERY, "s").partitions}
    assert sizes["state"] == 8 * GiB and sizes["oem"] == 100 * MiB
    assert sizes["persistent"] >= GiB


def test_identifiers_follow_the_inputs() -> None:
    first = plan_layout(DiskOptions(), ROOTFS, RECOVERY, "seed-a")
    again = plan_layout(DiskOptions(), ROOTFS, RECOVERY, "seed-a")
    other = plan_layout(DiskOptions(), ROOTFS, RECOVERY, "seed-b")
    assert first == again
    assert first.disk_guid != other.disk_guid
    assert len({p.guid for p in first.partitions}) == len(first.partitions)
    script = sfdisk_script(first)
    assert f"label-id: {first.disk_guid.upper()}" in script
    assert script.count("start=") == len(first.partitions) and 'name="persistent"' in script


def test_bios_boot_patches_the_mbr_and_the_core_blocklist(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as handle:
        handle.truncate(8 * MiB)
        handle.seek(440)
        handle.write(b"SIGN" + b"\0" * 66 + b"\x55\xaa")  # disk signature .. boot signature
    part = Partition("bios", None, "21686148-6449-6E6F-744E-656564454649", 2 * MiB, MiB, "x")
    install_bios_grub(disk, part, "COS_STATE", tmp_path, GRUB_LIB / "i386-pc")
    data = disk.read_bytes()
    assert struct.unpack_from("<Q", data, 0x5C)[0] == 2 * MiB // 512
    assert data[0x66:0x68] == b"\x90\x90"
    assert data[440:444] == b"SIGN" and data[510:512] == b"\x55\xaa"  # the table is kept
    start, count, segment = struct.unpack_from("<QHH", data, 2 * MiB + 500)
    core = (tmp_path / "core.img").stat().st_size
    assert (start, count, segment) == (2 * MiB // 512 + 1, -(-core // 512) - 1, 0x820)
    assert data[2 * MiB : 2 * MiB + 16] == (tmp_path / "core.img").read_bytes()[:16]


def test_a_core_image_too_big_for_the_partition_is_an_error(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * MiB)
    part = Partition("bios", None, "x", 512 * 1024, 4096, "x")
    with pytest.raises(Exception, match="does not fit"):
        install_bios_grub(disk, part, "COS_STATE", tmp_path, GRUB_LIB / "i386-pc")


def test_disks_are_expected_to_boot_immutable() -> None:
    assert default_expectation(Path("a.iso")) == "live"
    assert default_expectation(Path("a.qcow2")) == "immutable"
    good = {
        "root": "ext4",
        "root_mode": "ro",
        "image": "/cOS/active.img",
        "etc": "overlay",
        "root_image": "/run/kairos/state/cOS/active.img",
    }
    assert check_root(good, "immutable") is None
    live = {"root": "overlay", "root_mode": "rw", "image": "none", "etc": "none", "live": "squashfs"}
    assert "read-only" in (check_root(live, "immutable") or "")
    assert "overlay on /etc" in (check_root({**good, "etc": "ext4"}, "immutable") or "")
    assert check_root(live, "live") is None
