"""Disk formats derived from the build's one raw disk, each in a single conversion pass:
qcow2, vmdk and vhd with `qemu-img convert`, gce as `disk.raw` in a GNU tar.gz. The ids
qemu-img makes up for vmdk and vhd are replaced by ones derived from the build (vm_ids)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from kairos_build.core.tools import run
from kairos_build.disk.layout import GiB, stable_uuid
from kairos_build.disk.raw_disk import RAW_DISK_TOOLS
from kairos_build.disk.vm_ids import pin_vhd, pin_vmdk
from kairos_build.exporters.base import ExportContext


def qemu_img_convert(source: Path, output: Path, fmt: str, options: list[str]) -> None:
    run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *options, str(source), str(output)])


class DiskFormat:
    """What every format made from the raw disk shares: its boot mode and that it needs no
    host file (the boot loaders come from the image)."""

    boot_mode = "secureboot"
    trusted = True  # --boot-mode trusted: made from the Trusted Boot raw disk
    files: tuple[str, ...] = ()


class Qcow2Exporter(DiskFormat):
    """Build a qcow2 disk for QEMU/KVM, libvirt, OpenStack."""

    name = "qcow2"
    extension = "qcow2"
    tools = (*RAW_DISK_TOOLS, "qemu-img")

    def export(self, context: ExportContext, output: Path) -> None:
        # With --compress: zstd clusters, about half the size for a few seconds (zlib takes
        # four times as long). Uncompressed by default: the fastest first boot.
        options = ["-c", "-o", "compression_type=zstd"] if context.config.disk.compress else []
        qemu_img_convert(context.raw_disk(), output, "qcow2", options)


class VmdkExporter(DiskFormat):
    """Build a VMDK disk for VMware."""

    name = "vmdk"
    extension = "vmdk"
    tools = (*RAW_DISK_TOOLS, "qemu-img")

    def export(self, context: ExportContext, output: Path) -> None:
        # streamOptimized: the subformat vSphere/ESXi import and OVA packages take.
        qemu_img_convert(context.raw_disk(), output, "vmdk", ["-o", "subformat=streamOptimized"])
        cid = int(stable_uuid(context.rootfs_key, "vmdk-cid")[:8], 16)
        pin_vmdk(output, cid, f"{context.config.artifact_name}.{self.extension}")


class VhdExporter(DiskFormat):
    """Build a fixed VHD for Azure (size aligned to 1 MiB)."""

    name = "vhd"
    extension = "vhd"
    tools = (*RAW_DISK_TOOLS, "qemu-img")

    def export(self, context: ExportContext, output: Path) -> None:
        # Azure takes only fixed VHDs whose virtual size is a whole number of MiB; the raw
        # disk is MiB-aligned and force_size keeps qemu-img from rounding it to CHS geometry.
        qemu_img_convert(context.raw_disk(), output, "vpc", ["-o", "subformat=fixed,force_size=on"])
        pin_vhd(output, context.epoch, uuid.UUID(stable_uuid(context.rootfs_key, "vhd")))


class GceExporter(DiskFormat):
    """Build a Google Compute Engine image (disk.raw in a GNU tar.gz)."""

    name = "gce"
    extension = "tar.gz"
    tools = (*RAW_DISK_TOOLS, "tar", "gzip")

    def export(self, context: ExportContext, output: Path) -> None:
        """GCE wants `disk.raw` (the name is fixed) of a whole number of GiB, in a GNU tar.gz."""
        raw = context.raw_disk()
        folder = context.workdir / "gce"
        folder.mkdir(exist_ok=True)
        size = raw.stat().st_size
        if size % GiB == 0:
            sized = raw
        else:
            sized = folder / "sized.raw"
            run(["cp", "--sparse=always", "--reflink=auto", str(raw), str(sized)])
            os.truncate(sized, -(-size // GiB) * GiB)
            # The backup GPT must sit at the new end of the disk.
            run(
                [
                    "sfdisk",
                    "--quiet",
                    "--no-reread",
                    "--no-tell-kernel",
                    "--relocate",
                    "gpt-bak-std",
                    str(sized),
                ]
            )
        write_gce_bundle(sized, output, context.epoch, folder / "bundle")


def write_gce_bundle(disk: Path, output: Path, epoch: int, work: Path) -> None:
    """`disk` as `disk.raw` in a sparse GNU tar.gz at `output`: the same disk content gives
    the same bytes.

    tar --sparse records where the file's holes are, which is how a filesystem happened to
    allocate it (zeros written out, extents shared by reflink), not what it holds: the disk
    is first copied by `cp --sparse=always`, which makes every zero block a hole (reading
    only the data, so it costs a second where tar finding holes by reading takes 20). Then
    names sorted, root owner, date `epoch`, and gzip -n (no name or time in its header).
    """
    work.mkdir(parents=True, exist_ok=True)
    bundled = work / "disk.raw"
    bundled.unlink(missing_ok=True)
    run(["cp", "--sparse=always", "--reflink=never", str(disk), str(bundled)])
    run(
        [
            "tar",
            "--format=gnu",
            "--sparse",
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            f"--mtime=@{epoch}",
            "--use-compress-program=gzip -n -6",
            "-C",
            str(work),
            "-cf",
            str(output),
            "disk.raw",
        ]
    )
