"""Make an ISO written by pycdlib bootable as a disk too (a USB stick written with dd).

pycdlib writes the ISO9660 filesystem and both El Torito entries, which is all a CD needs. A
disk needs what pycdlib cannot write, done here in place on the finished file:

- BIOS: grub's `boot_hybrid.img` as the MBR code, told where the El Torito image's core
  starts (its first sector after `cdboot.img`); and the core's own first blocklist entry
  pointing at the sector after that, as `xorriso -boot_image grub grub2_boot_info=on` does.
- UEFI: a GPT whose partition 2 is a copy of the ESP image appended after the ISO data
  (strict firmware looks for an ESP partition, not at El Torito), partition 1 covering the
  ISO9660 data, a protective MBR entry marked bootable, the backup GPT at the end. A UEFI-only
  ISO (Trusted Boot) gets this part alone (`append_esp`).

The ISO9660 part is not moved or changed except for the two patched boot image fields, so
the file still boots as a CD.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

from kairos_build.core.errors import BuildError
from kairos_build.disk.bootsector import mark_pmbr_bootable
from kairos_build.disk.gpt import write_partition_table
from kairos_build.disk.grub import GRUB_LIB
from kairos_build.disk.layout import TYPE_ESP, stable_uuid

ISO_BLOCK = 2048
SECTOR = 512
TYPE_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
_HYBRID_CORE_SECTOR = 0x1B0  # boot_hybrid.img: u64 LBA of the core's first (diskboot) sector
_CDBOOT_SIZE = 2048  # the El Torito image is cdboot.img, then diskboot.img, then the core
_BLOCKLIST = _CDBOOT_SIZE + SECTOR - 12  # diskboot's first blocklist entry: u64 start, ...
_BOOT_INFO = 8  # El Torito boot info table: pvd lba, file lba, length, checksum (u32 each)
_MBR_CODE_END = 440
_ALIGN = 1 << 20  # the appended ESP starts on a MiB boundary (some firmware want 4 KiB)
_BACKUP_GPT = 33 * SECTOR


def patch_bios_image(iso: Path, image_lba: int, image_size: int) -> None:
    """Point the El Torito GRUB image's diskboot blocklist at the core on this disk, and keep
    the boot info table's checksum right afterwards."""
    offset = image_lba * ISO_BLOCK
    with iso.open("r+b") as handle:
        handle.seek(offset)
        image = bytearray(handle.read(image_size))
        if len(image) < _BLOCKLIST + 12:
            raise BuildError(
                f"the El Torito BIOS image in {iso.name} is too short for GRUB "
                f"({len(image)} bytes): it is not grub's cdboot + core"
            )
        struct.pack_into("<Q", image, _BLOCKLIST, image_lba * 4 + 5)
        # Boot info table checksum: the sum of the image's 32-bit words from byte 64 on.
        body = image[64:] + b"\0" * (-len(image[64:]) % 4)
        checksum = sum(struct.unpack(f"<{len(body) // 4}I", body)) & 0xFFFFFFFF
        struct.pack_into("<I", image, _BOOT_INFO + 12, checksum)
        handle.seek(offset)
        handle.write(image)


def sfdisk_script(seed: str, iso_end: int, esp_start: int, esp_size: int) -> str:
    return (
        "\n".join(
            [
                "label: gpt",
                f"label-id: {stable_uuid(seed, 'iso-disk').upper()}",
                "unit: sectors",
                "first-lba: 64",
                "sector-size: 512",
                f"start=64, size={iso_end // SECTOR - 64}, type={TYPE_BASIC_DATA}, "
                f'uuid={stable_uuid(seed, "iso-data").upper()}, name="ISO9660"',
                f"start={esp_start // SECTOR}, size={esp_size // SECTOR}, type={TYPE_ESP}, "
                f'uuid={stable_uuid(seed, "iso-esp").upper()}, name="EFI"',
            ]
        )
        + "\n"
    )


def copy_range(source: int, target: int, offset: int) -> None:
    """All of `source` into `target` at `offset`, copied by the kernel (copy_file_range: no
    pass through Python, a reflink where the filesystem can); read and written in chunks
    where the kernel cannot (files on two filesystems of different kinds)."""
    size = os.fstat(source).st_size
    done = 0
    while done < size:
        try:
            copied = os.copy_file_range(source, target, size - done, done, offset + done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            copied = os.pwrite(target, os.pread(source, min(1 << 20, size - done), done), offset + done)
        if copied == 0:
            raise OSError(f"the copy stopped at {done} of {size} bytes")
        done += copied


def make_hybrid(
    iso: Path, bios_image_lba: int, bios_image_size: int, esp: Path, seed: str, mbr_code: bytes | None = None
) -> None:
    """Turn the finished ISO at `iso` into a hybrid (see the module docstring). `mbr_code` is
    the grub's `boot_hybrid.img` whose core the ISO carries (default: the build host's)."""
    patch_bios_image(iso, bios_image_lba, bios_image_size)
    append_esp(iso, esp, seed)
    if mbr_code is None:
        mbr_code = (GRUB_LIB / "i386-pc" / "boot_hybrid.img").read_bytes()
    if len(mbr_code) < _HYBRID_CORE_SECTOR + 8:
        raise BuildError(f"grub's boot_hybrid.img for {iso.name} is {len(mbr_code)} bytes: not an MBR")
    code = bytearray(mbr_code[:_MBR_CODE_END])
    struct.pack_into("<Q", code, _HYBRID_CORE_SECTOR, bios_image_lba * 4 + 4)
    fd = os.open(iso, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(code), 0)  # the code only: the partition entries stay
    finally:
        os.close(fd)


def append_esp(iso: Path, esp: Path, seed: str) -> None:
    """The UEFI half: `esp` appended after the ISO data as GPT partition 2, partition 1 over the
    ISO9660 data, the protective MBR entry marked bootable."""
    iso_end = iso.stat().st_size
    esp_start = -(-iso_end // _ALIGN) * _ALIGN
    esp_size = -(-esp.stat().st_size // SECTOR) * SECTOR
    with iso.open("r+b") as handle, esp.open("rb") as source:
        copy_range(source.fileno(), handle.fileno(), esp_start)
        handle.truncate(esp_start + esp_size + _BACKUP_GPT)
    # --wipe never: the ISO9660 signature at 32 KiB must stay (it is what boots as a CD).
    write_partition_table(iso, sfdisk_script(seed, iso_end, esp_start, esp_size), wipe="never")
    mark_pmbr_bootable(iso)
