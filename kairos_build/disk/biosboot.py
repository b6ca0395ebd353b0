"""GRUB for BIOS on a GPT disk, without grub-install: the core image goes into the BIOS boot
partition and grub's boot sector into the MBR, patched to find it (what grub-bios-setup does).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from kairos_build.disk.grub import make_grub_image
from kairos_build.disk.layout import SECTOR, Partition
from kairos_build.errors import BuildError

# Offsets inside grub's boot.img (the MBR code) and diskboot.img (first sector of core.img).
_KERNEL_SECTOR = 0x5C  # u64: LBA of core.img's first sector
_DRIVE_CHECK = 0x66  # a jump that only makes sense for floppies; grub-setup turns it into nops
_MBR_CODE_END = 440  # disk signature and partition table follow: never overwrite them
_BLOCKLIST = SECTOR - 12  # diskboot's first blocklist entry: u64 start, u16 sectors, u16 segment
_CORE_SEGMENT = 0x820  # where diskboot loads the rest of core.img (0x800 + one sector)


def install_bios_grub(disk: Path, bios_partition: Partition, label: str, workdir: Path,
                      modules: Path) -> None:
    """Core image (searching the filesystem labelled `label`) into `bios_partition`, boot
    sector into the MBR, both from the grub i386-pc modules in `modules`."""
    core_path = workdir / "core.img"
    make_grub_image("i386-pc", core_path, label, workdir, modules, image_format="i386-pc")
    core = bytearray(core_path.read_bytes())
    if len(core) > bios_partition.size:
        raise BuildError(f"grub's core image ({len(core)} bytes) does not fit the "
                         f"{bios_partition.size} byte BIOS boot partition")
    first = bios_partition.start // SECTOR
    sectors = -(-len(core) // SECTOR)
    struct.pack_into("<QHH", core, _BLOCKLIST, first + 1, sectors - 1, _CORE_SEGMENT)

    boot = bytearray((modules / "boot.img").read_bytes())
    struct.pack_into("<Q", boot, _KERNEL_SECTOR, first)
    boot[_DRIVE_CHECK:_DRIVE_CHECK + 2] = b"\x90\x90"

    fd = os.open(disk, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(core), bios_partition.start)
        os.pwrite(fd, bytes(boot[:_MBR_CODE_END]), 0)
    finally:
        os.close(fd)
