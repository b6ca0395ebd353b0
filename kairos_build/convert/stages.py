"""The stages every pipeline that needs a converted rootfs shares: resolve the base, then
convert it through three cached stages (packages -> initramfs -> framework; see
convert/convert.py), plus the --overlay-rootfs files when given.

Each stage is keyed only by what shapes it, so a change re-runs the stages it reaches and no
earlier one: a framework file -> framework; our dracut module -> initramfs and framework; a
package -> all three (the packages' downloads then come from the shared package cache).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from kairos_build.agent import agent_files
from kairos_build.config.buildconfig import BuildConfig
from kairos_build.convert import convert, framework, initramfs, initramfs_reads, packages
from kairos_build.convert.convert import (
    apply_framework,
    build_initramfs,
    copy_base,
    install_packages,
    is_converted,
    refresh_converted,
    reuse_initramfs,
)
from kairos_build.convert.framework import find_kernel, layer_tree, overlay_dirs
from kairos_build.convert.initramfs import initramfs_command, initramfs_paths
from kairos_build.convert.plan import install_env, service_commands
from kairos_build.core import rootfs
from kairos_build.core.cache import Cache, Stage, hash_tree
from kairos_build.core.data import data_dir
from kairos_build.core.log import log, step
from kairos_build.core.reproducible import build_epoch, given_epoch
from kairos_build.source.resolve import Base, SourceOptions, resolve_base


def source_options(config: BuildConfig) -> SourceOptions:
    return SourceOptions(
        pull=config.pull,
        platform=config.platform,
        insecure_registries=config.insecure_registries,
        bootstrap_fallback=config.bootstrap_fallback,
        refresh=config.no_cache,
    )


def resolve_config_base(config: BuildConfig, cache: Cache) -> Base:
    """The configured base (or the flavor's default image) as a cached root directory."""
    with step("resolving the base"):
        base = resolve_base(config.base, config.flavor, config.release, cache, source_options(config))
        log.info("  base: %s", base.description)
    return base


def code_digest(*parts: Callable[..., object] | ModuleType) -> str:
    """The source of the code that carries a stage out: a kairos-build upgrade re-runs the
    stages whose code changed, and only those."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(inspect.getsource(part).encode())
    return digest.hexdigest()


def initramfs_files_digest(config: BuildConfig) -> str:
    """The framework files the initramfs tool reads (its configuration, our dracut module)."""
    digest = hashlib.sha256()
    for overlay in overlay_dirs(config.flavor.family):
        for path in initramfs_paths(config.flavor.initramfs):
            if (overlay / path).exists():
                digest.update(f"{overlay.name}/{path}\0{hash_tree(overlay / path)}\0".encode())
    return digest.hexdigest()


def framework_files_digest(config: BuildConfig) -> str:
    """Every framework file the framework stage lays (overlays/) or renders (its template)."""
    trees = [(d.name, hash_tree(d)) for d in overlay_dirs(config.flavor.family)]
    agent = [
        (rel, hashlib.sha256(source.read_bytes()).hexdigest())
        for rel, source in sorted(agent_files().items())
    ]
    return hashlib.sha256(
        repr((trees, agent, hash_tree(data_dir("templates") / "kairos-release.j2"))).encode()
    ).hexdigest()


def packages_stage(config: BuildConfig, base: Base) -> Stage:
    """The base plus the packages: what the package manager installs and the files its
    scripts read (the flavor's quirks.files), the environment it runs with."""
    flavor = config.flavor
    return Stage(
        "packages",
        "packages",
        {
            "base": base.key,
            "package_manager": flavor.package_manager,
            "packages": flavor.all_packages(config.release),
            "install_options": flavor.quirks.install_options,
            "env": install_env(flavor),
            "files": flavor.quirks.files,
            "arch": config.arch,
            "code": code_digest(packages, convert.install_packages),
            "SOURCE_DATE_EPOCH": given_epoch(),
        },
        lineage=("base",),
    )


def initramfs_stage(config: BuildConfig, base: Base, packages_key: str) -> Stage:
    """The initramfs: the packages tree (its kernel, the tool and what it copies from there),
    the tool's command and the framework files it reads; not the rest of the framework."""
    flavor = config.flavor
    return Stage(
        "initramfs",
        "initramfs",
        {
            "base": base.key,
            "packages": packages_key,
            "command": initramfs_command(flavor.initramfs, flavor.quirks.initrd),
            "initramfs_files": initramfs_files_digest(config),
            "code": code_digest(initramfs, initramfs_reads, convert.build_initramfs),
        },
        lineage=("base",),
    )


def initramfs_inputs(config: BuildConfig, packages_root: Path) -> dict[str, str]:
    """What an initramfs is made from besides the files it reads from the packages tree
    (convert/initramfs_reads.py): the kernel, the tool's own files in that tree, our files for
    it, its command, the date and the code. An initramfs made with the same may be taken."""
    flavor = config.flavor
    own = [
        hash_tree(path)
        for rel in initramfs_paths(flavor.initramfs)
        if (path := rootfs.resolve_in(packages_root, rel)).exists()
    ]
    return {
        "kernel": find_kernel(packages_root, flavor.quirks.kernel_image)[0],
        "tool": hashlib.sha256(repr(own).encode()).hexdigest(),
        "initramfs_files": initramfs_files_digest(config),
        "command": repr(initramfs_command(flavor.initramfs, flavor.quirks.initrd)),
        "epoch": str(build_epoch(packages_root)),
        "code": code_digest(initramfs, initramfs_reads, convert.build_initramfs),
    }


def initramfs_donors(cache: Cache) -> list[Path]:
    """The initramfs entries, the most recently used first."""
    entries = [cache.path("initramfs", r.key) for r in cache.records("initramfs")]
    return sorted((e for e in entries if e.is_dir()), key=lambda e: e.stat().st_mtime, reverse=True)


def framework_stage(config: BuildConfig, base: Base, packages_key: str, initramfs_key: str) -> Stage:
    """The converted rootfs: the packages tree, every framework file, the services, the release
    file (its values), the initramfs; SOURCE_DATE_EPOCH comes in with the packages."""
    flavor = config.flavor
    return Stage(
        "framework",
        "converted",
        {
            "base": base.key,
            "packages": packages_key,
            "initramfs": initramfs_key,
            "framework_files": framework_files_digest(config),
            "services": service_commands(flavor),
            "flavor": [flavor.name, flavor.family],
            "release": config.release,
            "version": config.version,
            "variant": config.variant,
            "model": config.model,
            "arch": config.arch,
            "code": code_digest(framework, convert.apply_framework),
        },
        lineage=("base",),
    )


def refresh_stage(config: BuildConfig, base: Base) -> Stage:
    """A base that is already a Kairos image: its release file and identity rewritten."""
    return Stage(
        "refresh",
        "converted",
        {
            "base": base.key,
            "flavor": [config.flavor.name, config.flavor.family],
            "release": config.release,
            "version": config.version,
            "variant": config.variant,
            "model": config.model,
            "arch": config.arch,
            "code": code_digest(framework, convert.refresh_converted),
            "SOURCE_DATE_EPOCH": given_epoch(),
        },
        lineage=("base",),
    )


def package_cache_name(config: BuildConfig) -> str:
    """The shared download folder of a conversion: packages of one manager, distro release and
    architecture have one name each there (pkgcache/NAME)."""
    return f"{config.flavor.package_manager}-{config.flavor.name}-{config.release.name}-{config.arch}"


def convert_base(config: BuildConfig, base: Base, cache: Cache) -> tuple[Path, str]:
    """The converted rootfs of `base` (a cache entry) and its key, made stage by stage."""
    refresh = config.no_cache
    if is_converted(base.rootfs):
        stage = refresh_stage(config, base)
        tree = cache.get_or_make_stage(
            stage, lambda target: refresh_converted(base.rootfs, target, config), refresh=refresh
        )
    else:
        tree, stage = convert_in_stages(config, base, cache)
    if config.overlay_rootfs is None:
        return tree, stage.key
    return overlay_rootfs(config.overlay_rootfs, tree, stage.key, cache, refresh)


def convert_in_stages(config: BuildConfig, base: Base, cache: Cache) -> tuple[Path, Stage]:
    """packages -> initramfs -> framework, each made only when its entry is missing; an
    existing converted rootfs needs neither of the others."""
    refresh, flavor = config.no_cache, config.flavor
    packages_entry = packages_stage(config, base)
    initrd_entry = initramfs_stage(config, base, packages_entry.key)
    final = framework_stage(config, base, packages_entry.key, initrd_entry.key)

    @functools.cache
    def packages_root() -> Path:
        def install(target: Path) -> None:
            manager = packages.package_manager(flavor.package_manager)
            with cache.package_cache(package_cache_name(config), manager.cache_dirs) as downloads:
                install_packages(base.rootfs, target, config, downloads)

        return cache.get_or_make_stage(packages_entry, install, refresh=refresh)

    def make_initramfs(target: Path) -> None:
        root = packages_root()
        inputs = initramfs_inputs(config, root)
        if refresh or not reuse_initramfs(root, target, initramfs_donors(cache), inputs):
            build_initramfs(root, target, config, inputs)

    @functools.cache
    def initrd() -> Path:
        return cache.get_or_make_stage(initrd_entry, make_initramfs, refresh=refresh)

    with step(f"converting {base.description} for {flavor.name}"):
        if refresh or not cache.path(final.kind, final.key).is_dir():
            packages_root()  # in stage order, so the log reads top to bottom
            initrd()
        tree = cache.get_or_make_stage(
            final, lambda target: apply_framework(packages_root(), initrd(), target, config), refresh=refresh
        )
    return tree, final


def overlay_rootfs(
    folder: Path, rootfs: Path, key: str, cache: Cache, refresh: bool = False
) -> tuple[Path, str]:
    """The converted rootfs plus the files of --overlay-rootfs, cached by both."""
    stage = Stage("overlay", "converted", {"rootfs": key, "files": hash_tree(folder)}, lineage=("rootfs",))

    def make(target: Path) -> None:
        with step(f"adding the files of {folder} to the rootfs"):
            copy_base(rootfs, target)
            layer_tree(target, folder)

    return cache.get_or_make_stage(stage, make, refresh=refresh), stage.key
