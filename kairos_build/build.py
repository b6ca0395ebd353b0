"""The pipeline: resolve the base -> convert it -> export artifacts. Read top to bottom."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kairos_build import __version__, artifact_cache
from kairos_build.cache import Cache, Stage, hash_tree, pid_is_gone
from kairos_build.checks import Report, check_rootfs, require_mode
from kairos_build.config import BuildConfig
from kairos_build.convert.convert import convert_rootfs, copy_base
from kairos_build.convert.framework import layer_tree
from kairos_build.data import data_dir
from kairos_build.errors import InputError
from kairos_build.exporters.base import ExportContext, Exporter, get_exporter
from kairos_build.log import log, step
from kairos_build.reproducible import build_epoch, given_epoch
from kairos_build.source.resolve import Base, SourceOptions, resolve_base
from kairos_build.tools import require_file, require_tool


@dataclass(frozen=True)
class Artifact:
    format: str
    path: Path
    sha256: str
    size: int


def source_options(config: BuildConfig) -> SourceOptions:
    return SourceOptions(pull=config.pull, platform=config.platform,
                         insecure_registries=config.insecure_registries,
                         bootstrap_fallback=config.bootstrap_fallback, refresh=config.no_cache)


def resolve_config_base(config: BuildConfig, cache: Cache) -> Base:
    """The configured base (or the flavor's default image) as a cached root directory."""
    with step("resolving the base"):
        base = resolve_base(config.base, config.flavor, config.release, cache,
                            source_options(config))
        log.info("  base: %s", base.description)
    return base


def check_base(config: BuildConfig, mode: str) -> tuple[Base, Report]:
    """`kairos-build check`: resolve the base and check its files against `mode`."""
    base = resolve_config_base(config, Cache(config.cache_dir))
    return base, check_rootfs(base.rootfs, mode)


def check_output_dir(path: Path) -> None:
    """Fail before any work when the artifacts could not be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".kairos-build-probe-"):
            pass
    except OSError as exc:
        raise InputError(f"output directory {path} is not writable: {exc.strerror}",
                         hint="choose another with --output DIR") from exc


def remove_stale_partials(output_dir: Path) -> None:
    """Half-written artifacts of killed builds (.NAME.partial-PID, .NAME.old-PID): a build
    that ends in any other way removes its own."""
    for leftover in [*output_dir.glob(".*.partial-*"), *output_dir.glob(".*.old-*")]:
        if pid_is_gone(leftover.name.rsplit("-", 1)[-1]):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def check_host_tools(exporters: list[Exporter]) -> None:
    """Fail before any work when a program a later step drives is missing (exit code 4)."""
    for tool in ("bwrap", "setpriv", "cp", "mmdebstrap"):
        require_tool(tool)
    for exporter in exporters:
        for tool in exporter.tools:
            require_tool(tool)
        for path in exporter.files:
            require_file(path)


def conversion_stage(config: BuildConfig, base: Base) -> Stage:
    """Everything that shapes the converted rootfs; change any of it and it is made anew.

    SOURCE_DATE_EPOCH is in only when set: unset, the date comes from the base, in already.
    """
    return Stage("conversion", "converted", {
        "base": base.key, "flavor": config.flavor.source.read_text(), "release": config.release,
        "overlays": hash_tree(data_dir("overlays")), "templates": hash_tree(data_dir("templates")),
        "version": config.version, "variant": config.variant, "model": config.model,
        "arch": config.arch, "tool": __version__, "SOURCE_DATE_EPOCH": given_epoch(),
    }, lineage=("base",))


def convert_base(config: BuildConfig, base: Base, cache: Cache) -> tuple[Path, str]:
    stage = conversion_stage(config, base)

    def make(target: Path) -> None:
        with step(f"converting {base.description} for {config.flavor.name}"):
            convert_rootfs(base.rootfs, target, config)

    rootfs = cache.get_or_make_stage(stage, make, refresh=config.no_cache)
    if config.overlay_rootfs is None:
        return rootfs, stage.key
    return overlay_rootfs(config.overlay_rootfs, rootfs, stage.key, cache, config.no_cache)


def overlay_rootfs(folder: Path, rootfs: Path, key: str, cache: Cache,
                   refresh: bool = False) -> tuple[Path, str]:
    """The converted rootfs plus the files of --overlay-rootfs, cached by both."""
    stage = Stage("overlay", "converted", {"rootfs": key, "files": hash_tree(folder)},
                  lineage=("rootfs",))

    def make(target: Path) -> None:
        with step(f"adding the files of {folder} to the rootfs"):
            copy_base(rootfs, target)
            layer_tree(target, folder)

    return cache.get_or_make_stage(stage, make, refresh=refresh), stage.key


def sha256_file(path: Path) -> str:
    """The file's sha256, reading only its data: a disk image is mostly holes, and reading a
    hole makes the kernel produce zeros page by page (seconds per GiB), while hashing a zero
    buffer we already have is several times faster."""
    digest = hashlib.sha256()
    chunk = 4 << 20
    zeros = memoryview(bytes(chunk))
    with path.open("rb") as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left (or no SEEK_DATA: read it all)
                data = size if _has_seek_data(fd) else pos
            for offset in range(pos, data, chunk):
                digest.update(zeros[:min(chunk, data - offset)])
            if data >= size:
                break
            end = os.lseek(fd, data, os.SEEK_HOLE)
            offset = data
            while offset < end:
                block = os.pread(fd, min(chunk, end - offset), offset)
                if not block:
                    raise OSError(f"{path} shrank while it was hashed")
                digest.update(block)
                offset += len(block)
            pos = end
    return digest.hexdigest()


def _has_seek_data(fd: int) -> bool:
    try:
        os.lseek(fd, 0, os.SEEK_HOLE)
        return True
    except OSError:
        return False


def export_artifact(exporter: Exporter, context: ExportContext, output_dir: Path) -> Artifact:
    """Write to hidden temporary names, then rename: no half-written artifact is ever visible.

    An exporter writes a file, checksummed in NAME.sha256 beside it, or a directory (netboot),
    named NAME-EXTENSION/ and checksummed file by file in a SHA256SUMS inside it.
    """
    name = context.config.artifact_name
    partial = output_dir / f".{name}.{exporter.extension}.partial-{os.getpid()}"
    final = output_dir / f"{name}.{exporter.extension}"
    key = artifact_cache.artifact_key(exporter, context)
    try:
        with step(f"exporting {exporter.name}"):
            reuse = not context.config.no_cache
            if reuse and (kept := artifact_cache.kept_output(context, key, final)):
                return Artifact(exporter.name, final, kept.sha256, kept.size)
            if not (reuse and artifact_cache.copy_cached(context, key, partial)):
                exporter.export(context, partial)
            if partial.is_dir():
                return _publish_directory(exporter.name, partial, output_dir / f"{name}-{exporter.extension}")
            artifact = _publish_file(exporter.name, partial, final)
            artifact_cache.store(context, key, final, artifact.sha256)
            return artifact
    except BaseException:
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise


def _publish_file(format_name: str, partial: Path, final: Path) -> Artifact:
    checksum = final.with_name(f"{final.name}.sha256")
    checksum_partial = final.with_name(f".{checksum.name}.partial-{os.getpid()}")
    try:
        digest = sha256_file(partial)
        checksum_partial.write_text(f"{digest}  {final.name}\n")
        partial.rename(final)
        checksum_partial.rename(checksum)
    except BaseException:
        checksum_partial.unlink(missing_ok=True)
        raise
    return Artifact(format_name, final, digest, final.stat().st_size)


def _publish_directory(format_name: str, partial: Path, final: Path) -> Artifact:
    """SHA256SUMS (`sha256sum -c` format) inside, then the rename; the artifact's digest is
    that of SHA256SUMS, which pins every file. A directory cannot replace a non-empty one in
    one rename: a previous build's is moved aside first and removed after."""
    files = sorted(p for p in partial.rglob("*") if p.is_file() and not p.is_symlink())
    sums = "".join(f"{sha256_file(p)}  {p.relative_to(partial).as_posix()}\n" for p in files)
    (partial / "SHA256SUMS").write_text(sums)
    size = sum(p.stat().st_size for p in files) + len(sums)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    replacing = final.exists() or final.is_symlink()
    if replacing:
        final.rename(old)
    try:
        partial.rename(final)
    except BaseException:
        if replacing:
            old.rename(final)
        raise
    if replacing:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    return Artifact(format_name, final, hashlib.sha256(sums.encode()).hexdigest(), size)


def build(config: BuildConfig, formats: list[str]) -> list[Artifact]:
    exporters = [get_exporter(name) for name in formats]
    check_host_tools(exporters)
    check_output_dir(config.output_dir)
    remove_stale_partials(config.output_dir)
    cache = Cache(config.cache_dir)
    cache.prune_partial()

    base = resolve_config_base(config, cache)
    rootfs, rootfs_key = convert_base(config, base, cache)
    with step("checking requirements"):
        for exporter in exporters:
            require_mode(rootfs, exporter.boot_mode, f"the {exporter.name} artifact")

    with cache.workdir() as work:
        context = ExportContext(config, rootfs, rootfs_key, cache, work, epoch=build_epoch(rootfs))
        artifacts = [export_artifact(e, context, config.output_dir) for e in exporters]
    for artifact in artifacts:
        log.info("wrote %s (%.0f MiB)", artifact.path, artifact.size / (1 << 20))
    return artifacts
