"""The exporter protocol, the context every exporter gets, and the plugin registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Protocol

from kairos_build import __version__
from kairos_build.config.buildconfig import BuildConfig
from kairos_build.core import rootfs as rootfs_module
from kairos_build.core.cache import Cache, Stage
from kairos_build.core.errors import InputError
from kairos_build.core.log import log, step
from kairos_build.disk.ext4 import ext4_options, make_ext4, mke2fs_version
from kairos_build.disk.layout import stable_uuid
from kairos_build.disk.raw_disk import make_raw_disk
from kairos_build.disk.squashfs import make_squashfs, mksquashfs_version, squashfs_options

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
    # SOURCE_DATE_EPOCH: every timestamp written into an artifact (kairos_build.core.reproducible).
    epoch: int = 0

    def squashfs(self) -> Path:
        """The rootfs as a squashfs, made once per converted rootfs, compression and tool."""
        compression = self.config.squashfs_compression
        stage = Stage(
            "squashfs",
            "squashfs",
            {
                "rootfs": self.rootfs_key,
                "compression": compression.spec,
                "epoch": self.epoch,
                "mksquashfs": mksquashfs_version(),
                "tool": __version__,
                "options": squashfs_options(compression, self.epoch),
            },
            lineage=("rootfs",),
            prefix=f"{compression.spec.replace(':', '')}-",
        )

        def make(target: Path) -> None:
            with step(f"making the squashfs ({compression})"):
                make_squashfs(self.rootfs, target / "rootfs.squashfs", compression, self.epoch)

        entry = self.cache.get_or_make_stage(stage, make, refresh=self.config.no_cache)
        return entry / "rootfs.squashfs"

    def boot_file(self, name: str) -> Path:
        """/boot/vmlinuz or /boot/initrd of the converted rootfs, resolved inside it."""
        path = rootfs_module.resolve_in(self.rootfs, f"boot/{name}")
        if not path.is_file():
            raise InputError(
                f"the converted rootfs has no /boot/{name}",
                hint="was it converted? kairos-build links the kernel and initrd there",
            )
        return path

    def kernel(self) -> Path:
        return self.boot_file("vmlinuz")

    def initrd(self) -> Path:
        return self.boot_file("initrd")

    def raw_disk(self) -> Path:
        """The raw GPT disk of this build (kairos_build.disk.raw_disk), made once and shared
        by every disk format: raw, qcow2, vmdk, vhd and gce are that disk, converted."""
        if "raw" not in self.made:
            path = self.workdir / "disk.raw"
            if self.config.boot_mode == "trusted":
                from kairos_build.trusted.disk import make_trusted_disk  # needs the image's ukify

                make_trusted_disk(self, path)
            else:
                make_raw_disk(self, path)
            self.made["raw"] = path
        return self.made["raw"]

    def root_image(self, size: int) -> Path:
        """The rootfs as the ext4 image `cOS/active.img` (label COS_ACTIVE), made once per
        converted rootfs, size and tool."""
        fs_uuid = stable_uuid(self.rootfs_key, "COS_ACTIVE")
        stage = Stage(
            "ext4 image",
            "ext4",
            {
                "rootfs": self.rootfs_key,
                "size": size,
                "epoch": self.epoch,
                "mke2fs": mke2fs_version(),
                "tool": __version__,
                "options": ext4_options("COS_ACTIVE", fs_uuid),
            },
            lineage=("rootfs",),
            prefix=f"{size >> 20}M-",
        )

        def make(target: Path) -> None:
            with step(f"making the system image ({size >> 20} MiB ext4)"):
                make_ext4(
                    target / "active.img", size, "COS_ACTIVE", fs_uuid, source=self.rootfs, epoch=self.epoch
                )

        return self.cache.get_or_make_stage(stage, make, refresh=self.config.no_cache) / "active.img"


class Exporter(Protocol):
    name: str
    extension: str
    # The boot mode the artifact's rootfs must pass (kairos_build.check.rules) before export.
    boot_mode: str
    # Host programs and files it drives: checked before the build spends any time.
    tools: tuple[str, ...]
    files: tuple[str, ...]

    def export(self, context: ExportContext, output: Path) -> None:
        """Write the artifact to `output` (a temporary name; the caller renames it)."""


@dataclass(frozen=True)
class Format:
    """An installed format: what its exporter declares, and which distribution provides it."""

    name: str
    extension: str
    boot_mode: str
    tools: tuple[str, ...]
    files: tuple[str, ...]
    provider: str
    summary: str
    exporter: type[Exporter]


def installed_formats() -> dict[str, Format]:
    """Every format registered in the entry point group, kairos-build's own and plugins' alike:
    the entry points are the only list of formats. A plugin that cannot be loaded is skipped
    with a warning."""
    found: dict[str, Format] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found:
            continue  # the first one installed wins (an editable install may list it twice)
        loaded = _load_format(entry)
        if loaded is not None:
            found[entry.name] = loaded
    return found


# Plugins already reported in this process: every command lists the formats more than once.
_skipped: set[str] = set()


def _load_format(entry: metadata.EntryPoint) -> Format | None:
    provider = entry.dist.name if entry.dist else "?"
    try:
        exporter = entry.load()
        doc = (exporter.__doc__ or "").strip().splitlines()
        return Format(
            entry.name,
            exporter.extension,
            exporter.boot_mode,
            tuple(exporter.tools),
            tuple(exporter.files),
            provider,
            doc[0] if doc else f"Build a {entry.name} artifact.",
            exporter,
        )
    # Any exception: a plugin is someone else's code, and one that is broken (a missing module,
    # a syntax error, a member it lacks) must not take every command down with it.
    except Exception as exc:
        if entry.name not in _skipped:
            _skipped.add(entry.name)
            log.warning(
                "warning: skipping the format plugin %r (%s, from %s): %s: %s",
                entry.name,
                entry.value,
                provider,
                type(exc).__name__,
                exc,
            )
        return None


def exporters() -> dict[str, type[Exporter]]:
    """Every installed exporter class by format name."""
    return {name: found.exporter for name, found in installed_formats().items()}


def get_exporter(name: str) -> Exporter:
    known = installed_formats()
    if name not in known:
        raise InputError(f"unknown format {name!r}", hint=f"known formats: {', '.join(known)}")
    return known[name].exporter()
