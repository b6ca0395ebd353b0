"""The stages every pipeline that needs a converted rootfs shares: resolve the base, then
convert it (cached), plus the --overlay-rootfs files when given."""

from __future__ import annotations

from pathlib import Path

from kairos_build import __version__
from kairos_build.cache import Cache, Stage, hash_tree
from kairos_build.config import BuildConfig
from kairos_build.convert.convert import convert_rootfs, copy_base
from kairos_build.convert.framework import layer_tree
from kairos_build.data import data_dir
from kairos_build.log import log, step
from kairos_build.reproducible import given_epoch
from kairos_build.source.resolve import Base, SourceOptions, resolve_base


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
