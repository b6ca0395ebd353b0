"""Raw GPT disk with the Kairos partition layout (kairos_build.disk.raw_disk), as it is."""

from __future__ import annotations

from pathlib import Path

from kairos_build.disk.raw_disk import RAW_DISK_TOOLS, link_or_copy
from kairos_build.exporters.base import ExportContext


class RawExporter:
    """Build a raw GPT disk with the Kairos partition layout (dd it to a disk)."""

    name = "raw"
    extension = "raw"
    boot_mode = "secureboot"  # grub on BIOS and UEFI, systemd or openrc, an EFI-stub kernel
    trusted = True  # --boot-mode trusted: systemd-boot and signed UKIs (trusted/disk.py)
    tools: tuple[str, ...] = RAW_DISK_TOOLS
    # The boot loaders come from the image (the host's grub only for an image without one).
    files: tuple[str, ...] = ()

    def export(self, context: ExportContext, output: Path) -> None:
        link_or_copy(context.raw_disk(), output)
