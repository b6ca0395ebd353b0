"""GRUB for BIOS on a disk image: the core image made from the image's i386-pc modules, both
of grub's images written by `bootsector` (shared with the node agent's install)."""

from __future__ import annotations

from pathlib import Path

from kairos_build.core.errors import BuildError
from kairos_build.disk.bootsector import BootSectorError, write_bios_boot
from kairos_build.disk.grub import make_grub_image
from kairos_build.disk.layout import Partition


def bios_core_image(label: str, workdir: Path, modules: Path) -> Path:
    """grub's i386-pc core image that finds the filesystem labelled `label`."""
    core_path = workdir / "core.img"
    make_grub_image("i386-pc", core_path, label, workdir, modules, image_format="i386-pc")
    return core_path


def install_bios_grub(
    disk: Path, bios_partition: Partition, label: str, workdir: Path, modules: Path
) -> None:
    """Core image (searching the filesystem labelled `label`) into `bios_partition`, boot
    sector into the MBR, both from the grub i386-pc modules in `modules`."""
    write_bios_images(disk, bios_partition, bios_core_image(label, workdir, modules), modules / "boot.img")


def write_bios_images(disk: Path, bios_partition: Partition, core: Path, boot: Path) -> None:
    """grub's core image `core` into `bios_partition`, its boot sector `boot` into the MBR."""
    try:
        write_bios_boot(disk, core.read_bytes(), boot.read_bytes(), bios_partition.start, bios_partition.size)
    except BootSectorError as exc:
        raise BuildError(str(exc)) from exc
