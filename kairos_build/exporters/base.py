"""The exporter protocol, the context every exporter gets, and the plugin registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Protocol

from kairos_build.cache import Cache
from kairos_build.config import BuildConfig
from kairos_build.disk.ext4 import make_ext4
from kairos_build.disk.layout import stable_uuid
from kairos_build.disk.squashfs import make_squashfs
from kairos_build.errors import InputError
from kairos_build.log import step

ENTRY_POINT_GROUP = "kairos_build.exporters"


@dataclass(frozen=True)
class ExportContext:
    """What an exporter may use: the converted rootfs (read-only), the config, shared parts."""

    config: BuildConfig
    rootfs: Path
    rootfs_key: str
    cache: Cache
    workdir: Path
    # Intermediates made during this build and shared by its exporters (e.g. the raw disk
    # that qcow2, vmdk, vhd and gce are converted from).
    made: dict[str, Path] = field(default_factory=dict)
    # SOURCE_DATE_EPOCH: every timestamp written into an artifact (kairos_build.reproducible).
    epoch: int = 0

    def squashfs(self) -> Path:
        """The rootfs as a squashfs, made once per converted rootfs and compression."""
        compression = self.config.squashfs_compression
        key = f"{self.rootfs_key[:40]}-{compression.spec}-{self.epoch}"

        def make(target: Path) -> None:
            with step(f"making the squashfs ({compression})"):
                make_squashfs(self.rootfs, target / "rootfs.squashfs", compression, self.epoch)

        return self.cache.get_or_make("squashfs", key, make) / "rootfs.squashfs"

    def root_image(self, size: int) -> Path:
        """The rootfs as the ext4 image `cOS/active.img` (label COS_ACTIVE), made once per
        converted rootfs and size."""
        key = f"{self.rootfs_key[:40]}-{size}-{self.epoch}"

        def make(target: Path) -> None:
            with step(f"making the system image ({size >> 20} MiB ext4)"):
                make_ext4(target / "active.img", size, "COS_ACTIVE",
                          stable_uuid(self.rootfs_key, "COS_ACTIVE"), source=self.rootfs,
                          epoch=self.epoch)

        return self.cache.get_or_make("ext4", key, make) / "active.img"


class Exporter(Protocol):
    name: str
    extension: str
    # The boot mode the artifact's rootfs must pass (kairos_build.checks) before export.
    boot_mode: str
    # Host programs and files it drives: checked before the build spends any time.
    tools: tuple[str, ...]
    files: tuple[str, ...]

    def export(self, context: ExportContext, output: Path) -> None:
        """Write the artifact to `output` (a temporary name; the caller renames it)."""


def exporters() -> dict[str, type[Exporter]]:
    """Every registered exporter by format name (built-ins, then installed plugins)."""
    from kairos_build.exporters.disk_formats import GceExporter, Qcow2Exporter, VhdExporter, VmdkExporter
    from kairos_build.exporters.iso import IsoExporter
    from kairos_build.exporters.netboot import NetbootExporter
    from kairos_build.exporters.raw import RawExporter

    found: dict[str, type[Exporter]] = {
        "iso": IsoExporter, "raw": RawExporter, "qcow2": Qcow2Exporter, "vmdk": VmdkExporter,
        "vhd": VhdExporter, "gce": GceExporter, "netboot": NetbootExporter,
    }
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found[entry.name] = entry.load()
    return found


def get_exporter(name: str) -> Exporter:
    known = exporters()
    if name not in known:
        raise InputError(f"unknown format {name!r}", hint=f"known formats: {', '.join(sorted(known))}")
    return known[name]()
