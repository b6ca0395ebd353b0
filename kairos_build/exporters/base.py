"""The exporter protocol, the context every exporter gets, and the plugin registry."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from kairos_build import __version__
from kairos_build.config.buildconfig import BuildConfig
from kairos_build.core import rootfs as rootfs_module
from kairos_build.core.cache import Cache, Stage, cache_key
from kairos_build.core.errors import InputError
from kairos_build.core.log import log, step
from kairos_build.disk.ext4 import ext4_options, make_ext4, mke2fs_version
from kairos_build.disk.layout import stable_uuid
from kairos_build.disk.raw_disk import (
    RawDiskParts,
    install_kit,
    measure_rootfs,
    plan_raw_disk,
    state_menu,
    write_raw_disk,
)
from kairos_build.disk.squashfs import make_squashfs, mksquashfs_version, squashfs_options
from kairos_build.trusted.disk import EspInputs, make_esp_files, plan_trusted_disk, write_trusted_disk
from kairos_build.trusted.keys import SigningKeys, load_keys
from kairos_build.trusted.verity import VerityImage, make_verity_image

ENTRY_POINT_GROUP = "kairos_build.exporters"


@dataclass(frozen=True)
class ExportContext:
    """What an exporter may use: the converted rootfs (read-only), the config, shared parts.

    It holds no state: what several formats of a build share is a stage, in the cache (the
    squashfs, the ext4 system image: later builds reuse them) or in the build's own object
    store under its work folder (the raw disk, the signed Trusted Boot files: made by whichever
    exporter asks first, gone with the build)."""

    config: BuildConfig
    rootfs: Path
    rootfs_key: str
    cache: Cache
    workdir: Path
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

    def _built_once(self, name: str, inputs: dict[str, Any], make: Callable[[Path], object]) -> Path:
        """An intermediate of this build that several of its formats use (osbuild's object
        store): kept under the build's work folder by the hash of its inputs, and made by
        whichever exporter asks first. Not in the cache: a raw disk or a set of signed files
        is cheap to make again next time and large or meaningless to keep."""
        return Cache(self.workdir / "objects").get_or_make(name, cache_key(name, **inputs), make)

    def install_kit(self) -> dict[str, Path]:
        """The installed disk's boot loaders and menu, for kairos-agent (disk/kit.py)."""
        config = self.config
        menu = state_menu(config.flavor.pretty_name, config.extra_kernel_args)
        return install_kit(self.rootfs, config.flavor.secure_boot, menu, self.workdir / "install-kit")

    def raw_disk(self) -> Path:
        """The raw GPT disk of this build (kairos_build.disk.raw_disk, or trusted.disk under
        Trusted Boot), made once and shared by every disk format: raw, qcow2, vmdk, vhd and
        gce are that disk, converted."""
        config = self.config
        inputs = {
            "rootfs": self.rootfs_key,
            "boot_mode": config.boot_mode,
            "disk": config.disk,
            "cloud_config": config.cloud_config,
            "extra": config.extra_kernel_args,
            "epoch": self.epoch,
        }

        def make(target: Path) -> None:
            if config.boot_mode == "trusted":
                self._write_trusted_disk(target / "disk.raw")
            else:
                self._write_raw_disk(target / "disk.raw")

        return self._built_once("raw-disk", inputs, make) / "disk.raw"

    def _write_raw_disk(self, output: Path) -> None:
        kernel, initrd = self.kernel(), self.initrd()
        rootfs_bytes = measure_rootfs(self.rootfs)
        squashfs = self.squashfs()
        layout = plan_raw_disk(self.config.disk, rootfs_bytes, (squashfs, kernel, initrd), self.rootfs_key)
        active = self.root_image(layout.image_size)
        parts = RawDiskParts(active, squashfs, kernel, initrd, self.install_kit(), self.config.cloud_config)
        write_raw_disk(output, layout, parts, self.workdir, self.rootfs_key, self.epoch)

    def _write_trusted_disk(self, output: Path) -> None:
        verity = self.verity_image()
        layout = plan_trusted_disk(self.config.disk, verity.path.stat().st_size, self.rootfs_key)
        loaders = self.trusted_esp_files()
        write_trusted_disk(
            output,
            layout,
            loaders,
            verity,
            self.config.cloud_config,
            self.workdir,
            self.rootfs_key,
            self.epoch,
        )

    def signing_keys(self) -> SigningKeys:
        assert self.config.keys is not None  # BuildConfig refuses trusted without keys
        return load_keys(self.config.keys, self.config.cache_dir)

    def verity_image(self) -> VerityImage:
        """The build's squashfs with its dm-verity tree: the root image Trusted Boot pins."""
        squashfs = self.squashfs()

        def make(target: Path) -> None:
            made = make_verity_image(squashfs, target / "root.verity.img", self.rootfs_key)
            (target / "root-hash").write_text(f"{made.root_hash} {made.hash_offset}\n")

        folder = self._built_once("verity", {"squashfs": str(squashfs), "seed": self.rootfs_key}, make)
        root_hash, offset = (folder / "root-hash").read_text().split()
        return VerityImage(folder / "root.verity.img", root_hash, int(offset))

    def trusted_esp_files(self) -> dict[str, Path]:
        """ESP path -> host file of a Trusted Boot ESP: signed systemd-boot, the signed UKIs,
        the menu and the keys to enroll. Signed once per build: a signature holds its signing
        time, and every format of a build must carry the same signed files."""
        config, keys, verity = self.config, self.signing_keys(), self.verity_image()
        inputs = EspInputs(self.rootfs, config.flavor.pretty_name, config.version, config.extra_kernel_args)

        def make(target: Path) -> None:
            files = make_esp_files(inputs, keys, verity, self.workdir / "trusted-esp")
            for path, source in files.items():
                (target / "esp" / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target / "esp" / path)
            (target / "order").write_text("".join(f"{path}\n" for path in files))

        key_inputs = {"esp": inputs, "keys": str(config.keys), "root_hash": verity.root_hash}
        folder = self._built_once("trusted-esp", key_inputs, make)
        return {path: folder / "esp" / path for path in (folder / "order").read_text().splitlines()}

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
