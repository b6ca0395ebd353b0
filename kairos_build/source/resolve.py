"""Turn a base reference into a cached, read-only root directory.

Images (OCI layouts and archives, docker archives, a docker daemon, a registry) are unpacked
once into the cache under their config digest; a bootstrap is cached under its recipe. What
comes back is never modified: conversion works on a copy.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from kairos_build.core.cache import Cache, cache_key
from kairos_build.core.errors import InputError, KairosError
from kairos_build.core.flavors import Flavor, Release
from kairos_build.core.log import log, step
from kairos_build.source.bootstrap import bootstrap_rootfs
from kairos_build.source.image import Image, apply_image
from kairos_build.source.refs import BaseRef, parse_ref


@dataclass(frozen=True)
class Base:
    """A resolved base: its root directory (never modified) and a key naming its content."""

    rootfs: Path
    key: str
    description: str


@dataclass(frozen=True)
class SourceOptions:
    """How far resolution may go: docker's --pull meaning, the platform, plain-http hosts, and
    whether a flavor's default image may be replaced by its bootstrap when it cannot be had."""

    pull: str = "missing"
    platform: str = "linux/amd64"
    insecure_registries: tuple[str, ...] = ()
    bootstrap_fallback: bool = True
    # --no-cache: unpack or bootstrap anew (pulled blobs, checked by digest, are reused).
    refresh: bool = False


def _tree_fingerprint(root: Path) -> str:
    """Cheap identity of a directory given as dir:PATH (paths, sizes, modes, times; not
    contents).

    Not its location: the same tree copied elsewhere (`cp -a`) is the same base, so it gives
    the same artifacts (their UUIDs are seeded from this key) and shares the cache."""
    entries = []
    # Relative paths by slicing: os.path.relpath took over half the time (1 s for 18k files).
    top = str(root)
    cut = len(top.rstrip("/")) + 1
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        prefix = f"{dirpath[cut:]}/" if dirpath != top else ""
        # Folders too (empty ones, links to folders): os.walk lists a link to a folder among
        # the folders, and does not enter it. A folder by its mode only: its size and date
        # depend on the filesystem and on what it once held, not on what it holds.
        for name in sorted(filenames + dirnames):
            st = os.lstat(f"{dirpath}/{name}")
            if stat.S_ISDIR(st.st_mode):
                entries.append((f"{prefix}{name}", 0, 0, st.st_mode))
            else:
                entries.append((f"{prefix}{name}", st.st_size, st.st_mtime_ns, st.st_mode))
    return cache_key("dir", entries=entries)


def _rootfs_key(config_digest: str) -> str:
    return config_digest.replace(":", "-")


@dataclass(frozen=True)
class _ImageById:
    """A daemon image known by ID whose rootfs is cached; exported only if the entry vanished
    (pruned between the check and its use)."""

    name: str
    config_digest: str
    cache: Cache
    options: SourceOptions

    @property
    def description(self) -> str:
        return f"docker image {self.name}"

    def apply(self, target: Path) -> None:
        from kairos_build.source.docker_daemon import open_daemon_image

        with self.cache.workdir() as work:
            image = open_daemon_image(self.name, work, pull="never", platform=self.options.platform)
            if image is None:
                raise InputError(f"the docker daemon went away while reading {self.name}")
            apply_image(image, target)


def unpack_cached(image: Image | _ImageById, cache: Cache, refresh: bool = False) -> Base:
    """The image's rootfs from the cache, unpacked there first when missing (or `refresh`)."""
    key = _rootfs_key(image.config_digest)

    def unpack(target: Path) -> None:
        with step(f"unpacking {image.description}"):
            if isinstance(image, _ImageById):
                image.apply(target)
            else:
                apply_image(image, target)

    rootfs = cache.get_or_make("rootfs", key, unpack, refresh=refresh)
    return Base(rootfs, key, f"{image.description} ({image.config_digest[:19]})")


def _from_daemon(name: str, cache: Cache, options: SourceOptions) -> Base | None:
    """The docker daemon's image (the `docker build` flow), or None when no daemon answers."""
    from kairos_build.source.docker_daemon import (
        daemon_available,
        local_image_id,
        open_daemon_image,
    )

    if not daemon_available():
        return None
    image_id = local_image_id(name) if options.pull != "always" else None
    if image_id and cache.path("rootfs", _rootfs_key(image_id)).is_dir() and not options.refresh:
        # Already unpacked under its config digest: no export of the whole image again.
        log.info("  docker image %s is %s, unpacked before", name, image_id[:19])
        return unpack_cached(_ImageById(name, image_id, cache, options), cache)
    with cache.workdir() as work:
        image = open_daemon_image(name, work, pull=options.pull, platform=options.platform)
        return None if image is None else unpack_cached(image, cache, options.refresh)


def _from_daemon_or_registry(name: str, cache: Cache, options: SourceOptions) -> Base:
    """docker://NAME: the local docker daemon first, then a registry, pulled daemonless."""
    from kairos_build.source.registry import open_registry_image

    base = _from_daemon(name, cache, options)
    if base is not None:
        return base
    image = open_registry_image(
        name,
        cache,
        pull=options.pull,
        platform=options.platform,
        insecure_registries=options.insecure_registries,
    )
    return unpack_cached(image, cache, options.refresh)


def _bootstrap(ref: BaseRef, flavor: Flavor, cache: Cache, options: SourceOptions) -> Base:
    distro, _, suite = ref.target.partition("/")
    recipe = next(
        (r.bootstrap for r in flavor.releases.values() if r.bootstrap and r.bootstrap.suite == suite), None
    )
    if distro != flavor.name or recipe is None:
        raise InputError(
            f"--base {ref}: flavor {flavor.name} has no bootstrap recipe for {ref.target}",
            hint=f"use bootstrap:{flavor.name}/<suite> with a suite from flavors/{flavor.name}.yaml",
        )
    key = cache_key("bootstrap", recipe=recipe)
    if options.pull == "never" and not cache.path("rootfs", key).is_dir():
        raise InputError(
            f"--base {ref} is not cached and --pull never forbids bootstrapping",
            hint="run once with --pull missing",
        )

    def make(target: Path) -> None:
        with step(f"bootstrapping {distro} {suite} with {recipe.tool}"):
            bootstrap_rootfs(recipe, target)

    rootfs = cache.get_or_make("rootfs", key, make, refresh=options.pull == "always" or options.refresh)
    return Base(rootfs, key, str(ref))


def _readable(ref: BaseRef) -> Path:
    path = Path(ref.target)
    if not path.exists() or not os.access(path, os.R_OK):
        raise InputError(f"--base {ref}: {path} does not exist or is not readable")
    return path


# A bootstrap: base runs mmdebstrap in a mount and PID namespace of its own (source/bootstrap.py).
BOOTSTRAP_TOOLS = ("unshare", "mmdebstrap")


def base_tools(base: str | None, release: Release) -> tuple[str, ...]:
    """The host programs resolving `base` drives: a bootstrap's; none for an image or a folder,
    read in Python. (A flavor's image that cannot be had and falls back to its bootstrap checks
    mmdebstrap when it gets there.)"""
    ref = parse_ref(base) if base else parse_ref(release.image)
    return BOOTSTRAP_TOOLS if ref.transport == "bootstrap" else ()


def resolve_base(
    base: str | None, flavor: Flavor, release: Release, cache: Cache, options: SourceOptions | None = None
) -> Base:
    """Resolve `base` (or, without one, the flavor's default image) into a root directory."""
    options = options or SourceOptions()
    ref = parse_ref(base) if base else parse_ref(release.image)

    if ref.transport == "docker":
        try:
            return _from_daemon_or_registry(ref.target, cache, options)
        except KairosError as exc:
            if base is not None or release.bootstrap is None or not options.bootstrap_fallback:
                raise
            log.info(
                "base image %s cannot be had (%s); bootstrapping %s/%s with %s instead",
                ref.target,
                exc.message,
                flavor.name,
                release.bootstrap.suite,
                release.bootstrap.tool,
            )
            ref = BaseRef("bootstrap", f"{flavor.name}/{release.bootstrap.suite}")

    if ref.transport == "dir":
        path = Path(ref.target)
        if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"--base {ref}: {path} is not a readable directory")
        return Base(path, _tree_fingerprint(path), str(ref))
    if ref.transport in ("oci", "oci-archive"):
        from kairos_build.source.oci import open_oci_image

        return unpack_cached(
            open_oci_image(_readable(ref), ref.tag, options.platform), cache, options.refresh
        )
    if ref.transport == "docker-archive":
        from kairos_build.source.docker_archive import open_docker_archive

        return unpack_cached(
            open_docker_archive(_readable(ref), None, options.platform), cache, options.refresh
        )
    if ref.transport == "bootstrap":
        return _bootstrap(ref, flavor, cache, options)
    raise InputError(
        f"--base {ref}: {ref.transport} bases are not supported",
        hint="use docker://, oci:, oci-archive:, docker-archive:, dir: or bootstrap:",
    )
