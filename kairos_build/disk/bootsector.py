"""GRUB for BIOS on a GPT disk without grub-install (what grub-bios-setup does): grub's core
image goes into the BIOS boot partition and its boot sector into the MBR, each patched to find
the other. Stdlib only: the build host writes disk images with it, the node agent disks.
"""

from __future__ import annotations

import os
import struct

SECTOR = 512
# Offsets inside grub's boot.img (the MBR code) and diskboot.img (first sector of core.img).
_KERNEL_SECTOR = 0x5C  # u64: LBA of core.img's first sector
_DRIVE_CHECK = 0x66  # a jump that only makes sense for floppies; grub-setup turns it into nops
_MBR_CODE_END = 440  # disk signature and partition table follow: never overwrite them
_BLOCKLIST = SECTOR - 12  # diskboot's first blocklist entry: u64 start, u16 sectors, u16 segment
_CORE_SEGMENT = 0x820  # where diskboot loads the rest of core.img (0x800 + one sector)
_PMBR_STATUS = 446  # status byte of the first MBR partition entry (the 0xEE protective one)


class BootSectorError(ValueError):
    """grub's images do not fit where they must go."""


def patched_images(core: bytes, boot: bytes, start: int, size: int) -> tuple[bytes, bytes]:
    """(core image, MBR code) for a BIOS boot partition at byte `start` of `size` bytes."""
    if len(core) > size:
        raise BootSectorError(
            f"grub's core image ({len(core)} bytes) does not fit the {size} byte BIOS boot partition"
        )
    if len(boot) < _MBR_CODE_END:
        raise BootSectorError(f"grub's boot.img has {len(boot)} bytes, not a boot sector")
    first = start // SECTOR
    sectors = -(-len(core) // SECTOR)
    patched_core = bytearray(core)
    struct.pack_into("<QHH", patched_core, _BLOCKLIST, first + 1, sectors - 1, _CORE_SEGMENT)
    patched_boot = bytearray(boot)
    struct.pack_into("<Q", patched_boot, _KERNEL_SECTOR, first)
    patched_boot[_DRIVE_CHECK : _DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(patched_core), bytes(patched_boot[:_MBR_CODE_END])


def write_bios_boot(disk: str | os.PathLike[str], core: bytes, boot: bytes, start: int, size: int) -> None:
    """Both images into `disk` (an image file or a block device), the partition table kept;
    the protective MBR entry marked active, which some BIOSes need to boot a GPT disk."""
    patched_core, mbr_code = patched_images(core, boot, start, size)
    fd = os.open(disk, os.O_RDWR)
    try:
        os.pwrite(fd, patched_core, start)
        os.pwrite(fd, mbr_code, 0)
    finally:
        os.close(fd)
    mark_pmbr_bootable(disk)


def mark_pmbr_bootable(disk: str | os.PathLike[str]) -> None:
    """Some BIOSes only boot a GPT disk whose protective MBR entry is marked active."""
    fd = os.open(disk, os.O_RDWR)
    try:
        os.pwrite(fd, b"\x80", _PMBR_STATUS)
    finally:
        os.close(fd)
