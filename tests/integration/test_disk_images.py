"""Every disk format from one `build` call, checked by independent tools: sgdisk/sfdisk for
the GPT, e2fsck/dumpe2fs/debugfs and fsck.vfat/mtools for each partition, qemu-img for the
converted formats, tar for the GCE bundle."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import CLOUD_CONFIG

MiB = 1 << 20
GiB = 1 << 30
LABELS = ["COS_GRUB", None, "COS_OEM", "COS_RECOVERY", "COS_STATE", "COS_PERSISTENT"]
NAMES = ["efi", "bios", "oem", "recovery", "state", "persistent"]


def sh(*argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if ok:
        assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def disks(built_disks: tuple[dict[str, Path], str]) -> dict[str, Path]:
    return built_disks[0]


@pytest.fixture(scope="module")
def table(disks: dict[str, Path]) -> list[dict[str, object]]:
    dump = json.loads(sh("sfdisk", "--json", str(disks["raw"])).stdout)
    return list(dump["partitiontable"]["partitions"])


def extract(raw: Path, part: dict[str, object], dest: Path) -> Path:
    """One partition as a file of its own (sparse), for tools that take no offset."""
    sh(
        "dd",
        f"if={raw}",
        f"of={dest}",
        "bs=1M",
        f"skip={int(part['start']) // 2048}",  # type: ignore[call-overload]
        f"count={int(part['size']) // 2048}",  # type: ignore[call-overload]
        "conv=sparse",
        "status=none",
    )
    return dest


def test_gpt_validates_and_has_the_kairos_layout(
    disks: dict[str, Path], table: list[dict[str, object]]
) -> None:
    raw = disks["raw"]
    verify = sh("sgdisk", "-v", str(raw)).stdout
    assert "No problems found" in verify
    sh("sfdisk", "--verify", str(raw))
    assert [p["name"] for p in table] == NAMES
    for part in table:
        assert int(part["start"]) % 2048 == 0, part  # type: ignore[call-overload]  # 1 MiB aligned
    assert table[0]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert table[1]["type"] == "21686148-6449-6E6F-744E-656564454649"
    # The backup GPT sits in the last MiB and the disk is a whole number of MiB.
    assert raw.stat().st_size % MiB == 0
    last = table[-1]
    assert (int(last["start"]) + int(last["size"])) * 512 <= raw.stat().st_size - 33 * 512  # type: ignore[call-overload]


def test_mbr_carries_grub_pointing_at_the_bios_boot_partition(
    disks: dict[str, Path], table: list[dict[str, object]], probe_tree: Path
) -> None:
    with disks["raw"].open("rb") as handle:
        mbr = handle.read(512)
        bios_start = int(table[1]["start"])  # type: ignore[call-overload]
        handle.seek(bios_start * 512)
        diskboot = handle.read(512)
    assert mbr[510:512] == b"\x55\xaa"
    assert mbr[0x1BE + 4] == 0xEE and mbr[0x1BE] == 0x80  # protective entry, marked active
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == bios_start
    boot_img = (probe_tree / "usr/lib/grub/i386-pc/boot.img").read_bytes()
    assert mbr[:0x5C] == boot_img[:0x5C]  # the image's grub boot code, not a blank MBR
    start, count, segment = struct.unpack_from("<QHH", diskboot, 500)
    assert (start, segment) == (bios_start + 1, 0x820) and count > 0


@pytest.mark.parametrize("index", [2, 3, 4, 5])
def test_every_ext4_partition_checks_clean_with_its_label(
    disks: dict[str, Path], table: list[dict[str, object]], index: int, tmp_path: Path
) -> None:
    image = extract(disks["raw"], table[index], tmp_path / "part.img")
    sh("e2fsck", "-fn", str(image))
    header = sh("dumpe2fs", "-h", str(image)).stdout
    assert f"Filesystem volume name:   {LABELS[index]}" in header
    # GRUB 2.06 cannot read these; they must stay off on the partitions GRUB reads.
    features = next(line for line in header.splitlines() if line.startswith("Filesystem features"))
    assert "metadata_csum_seed" not in features and "orphan_file" not in features


def test_esp_checks_clean_and_holds_the_images_signed_chain(
    disks: dict[str, Path], table: list[dict[str, object]], probe_tree: Path, tmp_path: Path
) -> None:
    """shim as the removable loader, the distro's signed disk grub (grubx64, never the CD build
    that would search every disk) beside it, and a config where its prefix /EFI/debian points."""
    image = extract(disks["raw"], table[0], tmp_path / "esp.img")
    sh("fsck.vfat", "-n", str(image))
    expected = {
        "EFI/BOOT/BOOTX64.EFI": "usr/lib/shim/shimx64.efi.signed",
        "EFI/BOOT/grubx64.efi": "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
        "EFI/BOOT/mmx64.efi": "usr/lib/shim/mmx64.efi.signed",
    }
    for on_esp, in_rootfs in expected.items():
        copy = tmp_path / "file"
        sh("mcopy", "-o", "-i", str(image), f"::/{on_esp}", str(copy))
        assert copy.read_bytes() == (probe_tree / in_rootfs).read_bytes(), on_esp
    assert "FBX64" not in sh("mdir", "-i", str(image), "-/", "-b", "::/").stdout.upper()
    sh("mcopy", "-i", str(image), "::/EFI/debian/grub.cfg", str(tmp_path / "stub.cfg"))
    stub = (tmp_path / "stub.cfg").read_text()
    assert "--label --set=root COS_STATE" in stub and "configfile ($root)/boot/grub/grub.cfg" in stub


def debugfs(image: Path, command: str) -> str:
    return sh("debugfs", "-R", command, str(image)).stdout


def test_state_holds_the_system_image_and_the_menu(
    disks: dict[str, Path], table: list[dict[str, object]], tmp_path: Path
) -> None:
    state = extract(disks["raw"], table[4], tmp_path / "state.img")
    assert "active.img" in debugfs(state, "ls -l /cOS")
    menu = debugfs(state, "cat /boot/grub/grub.cfg")
    assert "root=LABEL=COS_STATE" in menu and "cos-img/filename=/cOS/active.img" in menu
    assert "console=ttyS0,115200" in menu and "--id recovery" in menu and "--id passive" in menu
    active = tmp_path / "active.img"
    sh("debugfs", "-R", f"dump /cOS/active.img {active}", str(state))
    sh("e2fsck", "-fn", str(active))
    assert "COS_ACTIVE" in sh("dumpe2fs", "-h", str(active)).stdout
    release = debugfs(active, "cat /etc/kairos-release")
    assert 'KAIROS_FLAVOR="debian"' in release or "KAIROS_FLAVOR=debian" in release
    assert "vmlinuz" in debugfs(active, "ls -l /boot")
    # The initramfs module that mounts it is in the image.
    assert "kairos-immutable-setup.sh" in debugfs(
        active, "ls -l /usr/lib/dracut/modules.d/90kairos-immutable"
    )


def test_recovery_and_oem_partitions(
    disks: dict[str, Path], table: list[dict[str, object]], tmp_path: Path
) -> None:
    recovery = extract(disks["raw"], table[3], tmp_path / "recovery.img")
    listing = debugfs(recovery, "ls -l /cOS") + debugfs(recovery, "ls -l /boot")
    assert "recovery.squashfs" in listing and "vmlinuz" in listing and "initrd" in listing
    oem = extract(disks["raw"], table[2], tmp_path / "oem.img")
    assert debugfs(oem, "cat /90_custom.yaml") == CLOUD_CONFIG


def test_converted_formats_agree_with_the_raw_disk(disks: dict[str, Path]) -> None:
    size = disks["raw"].stat().st_size
    sh("qemu-img", "check", str(disks["qcow2"]))
    for fmt, qemu_fmt in (("qcow2", "qcow2"), ("vmdk", "vmdk"), ("vhd", "vpc")):
        info = json.loads(sh("qemu-img", "info", "-f", qemu_fmt, "--output=json", str(disks[fmt])).stdout)
        assert info["virtual-size"] == size, fmt
    vhd = disks["vhd"]
    assert (vhd.stat().st_size - 512) % MiB == 0  # fixed: the data, MiB-aligned, then the footer
    with vhd.open("rb") as handle:
        handle.seek(-512, 2)
        footer = handle.read(512)
    assert footer[:8] == b"conectix" and struct.unpack_from(">I", footer, 60)[0] == 2  # fixed disk
    # Our date and UUID went in with a checksum that still adds up (ones' complement of the
    # byte sum, checksum field taken as zero).
    unsummed = footer[:64] + bytes(4) + footer[68:]
    assert struct.unpack_from(">I", footer, 64)[0] == ~sum(unsummed) & 0xFFFFFFFF
    # The vmdk's descriptor names the file as published, not the temporary name it was written to.
    descriptor = disks["vmdk"].read_bytes()[: 64 * 1024]
    assert f'"{disks["vmdk"].name}"'.encode() in descriptor and b".partial" not in descriptor
    for fmt, qemu_fmt in (("vmdk", "vmdk"), ("vhd", "vpc")):
        assert (
            sh(
                "qemu-img", "compare", "-f", "raw", "-F", qemu_fmt, str(disks["raw"]), str(disks[fmt])
            ).returncode
            == 0
        ), fmt
    # The qcow2 holds exactly the raw disk's bytes.
    assert (
        sh(
            "qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(disks["raw"]), str(disks["qcow2"])
        ).returncode
        == 0
    )


def test_gce_bundle_is_a_gnu_tar_of_disk_raw_in_whole_gib(disks: dict[str, Path]) -> None:
    with tarfile.open(disks["gce"], "r:gz") as bundle:
        members = bundle.getmembers()
        assert [m.name for m in members] == ["disk.raw"]
        assert members[0].size % GiB == 0
        assert members[0].size >= disks["raw"].stat().st_size
    with disks["gce"].open("rb") as handle:
        raw_tar = __import__("gzip").GzipFile(fileobj=handle).read(512)
    assert raw_tar[257:265] == b"ustar  \0"  # GNU format, as GCE's importer requires


def test_checksums_match(disks: dict[str, Path]) -> None:
    for path in (disks["qcow2"], disks["vmdk"]):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.with_name(path.name + ".sha256").read_text().split()[0] == digest
    assert not list(disks["raw"].parent.glob(".*partial*"))
