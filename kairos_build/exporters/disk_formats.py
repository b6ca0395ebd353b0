"""Disk formats derived from the build's one raw disk, each in a single conversion pass:
qcow2, vmdk and vhd with `qemu-img convert`, gce as `disk.raw` in a GNU tar.gz. The ids
qemu-img makes up for vmdk and vhd are replaced by ones derived from the build (vm_ids)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from kairos_build.disk.layout import GiB, stable_uuid
from kairos_build.disk.vm_ids import pin_vhd, pin_vmdk
from kairos_build.exporters.base import ExportContext
from kairos_build.exporters.raw import RawExporter, raw_disk
from kairos_build.tools import run


def qemu_img_convert(source: Path, output: Path, fmt: str, options: list[str]) -> None:
    run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *options, str(source), str(output)])


class Qcow2Exporter(RawExporter):
    name = "qcow2"
    extension = "qcow2"
    tools = (*RawExporter.tools, "qemu-img")

    def export(self, context: ExportContext, output: Path) -> None:
        # With --compress: zstd clusters, about half the size for a few seconds (zlib takes
        # four times as long). Uncompressed by default: the fastest first boot.
        options = ["-c", "-o", "compression_type=zstd"] if context.config.disk.compress else []
        qemu_img_convert(raw_disk(context), output, "qcow2", options)


class VmdkExporter(RawExporter):
    name = "vmdk"
    extension = "vmdk"
    tools = (*RawExporter.tools, "qemu-img")

    def export(self, context: ExportContext, output: Path) -> None:
        # streamOptimized: the subformat vSphere/ESXi import and OVA packages take.
        qemu_img_convert(raw_disk(context), output, "vmdk", ["-o", "subformat=streamOptimized"])
        cid = int(stable_uuid(context.rootfs_key, "vmdk-cid")[:8], 16)
        pin_vmdk(output, cid, f"{context.config.artifact_name}.{self.extension}")


class VhdExporter(RawExporter):
    name = "vhd"
    extension = "vhd"
    tools = (*RawExporter.tools, "qemu-img")

    def export(self, context: ExportContext, output: Path) -> None:
        # Azure takes only fixed VHDs whose virtual size is a whole number of MiB; the raw
        # disk is MiB-aligned and force_size keeps qemu-img from rounding it to CHS geometry.
        qemu_img_convert(raw_disk(context), output, "vpc", ["-o", "subformat=fixed,force_size=on"])
        pin_vhd(output, context.epoch, uuid.UUID(stable_uuid(context.rootfs_key, "vhd")))


class GceExporter(RawExporter):
    name = "gce"
    extension = "tar.gz"
    tools = (*RawExporter.tools, "tar", "gzip")

    def export(self, context: ExportContext, output: Path) -> None:
        """GCE wants `disk.raw` (the name is fixed) of a whole number of GiB, in a GNU tar.gz."""
        raw = raw_disk(context)
        folder = context.workdir / "gce"
        folder.mkdir(exist_ok=True)
        disk = folder / "disk.raw"
        size = raw.stat().st_size
        if size % GiB == 0:
            disk.unlink(missing_ok=True)
            os.link(raw, disk)
        else:
            run(["cp", "--sparse=always", "--reflink=auto", str(raw), str(disk)])
            os.truncate(disk, -(-size // GiB) * GiB)
            # The backup GPT must sit at the new end of the disk.
            run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--relocate",
                 "gpt-bak-std", str(disk)])
        write_gce_bundle(disk, output, context.epoch)


def write_gce_bundle(disk: Path, output: Path, epoch: int) -> None:
    """`disk` (named disk.raw) as a sparse GNU tar.gz at `output`, the same bytes for the same
    disk content."""
    # Holes found by reading (zero blocks), not asked of the filesystem: where it happened to
    # allocate zeros (or shares extents by reflink) differs between machines, the content does
    # not. gzip -n: no name or time in the gzip header.
    run(["tar", "--format=gnu", "--sparse", "--hole-detection=raw", "--sort=name",
         "--owner=0", "--group=0",
         "--numeric-owner", f"--mtime=@{epoch}", "--use-compress-program=gzip -n -6",
         "-C", str(disk.parent), "-cf", str(output), disk.name])
