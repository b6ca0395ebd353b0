"""The exporter protocol, the context every exporter gets, and the plugin registry."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol

from kairos_build.cache import Cache
from kairos_build.config import BuildConfig
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

    def squashfs(self) -> Path:
        """The rootfs as a squashfs, made once per converted rootfs and compression."""
        compression = self.config.squashfs_compression
        key = f"{self.rootfs_key[:40]}-{compression}"

        def make(target: Path) -> None:
            with step(f"making the squashfs ({compression})"):
                make_squashfs(self.rootfs, target / "rootfs.squashfs", compression)

        return self.cache.get_or_make("squashfs", key, make) / "rootfs.squashfs"


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
    from kairos_build.exporters.iso import IsoExporter

    found: dict[str, type[Exporter]] = {"iso": IsoExporter}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found[entry.name] = entry.load()
    return found


def get_exporter(name: str) -> Exporter:
    known = exporters()
    if name not in known:
        raise InputError(f"unknown format {name!r}", hint=f"known formats: {', '.join(sorted(known))}")
    return known[name]()
