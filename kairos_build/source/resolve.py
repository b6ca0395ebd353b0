"""Turn a base reference into a cached, read-only root directory."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from kairos_build.cache import Cache, cache_key
from kairos_build.errors import InputError
from kairos_build.flavors import Flavor, Release
from kairos_build.log import log, step
from kairos_build.source.bootstrap import bootstrap_rootfs
from kairos_build.source.oci import image_config_digest, unpack_image
from kairos_build.source.refs import BaseRef, parse_ref


@dataclass(frozen=True)
class Base:
    """A resolved base: its root directory (never modified) and a key naming its content."""

    rootfs: Path
    key: str
    description: str


def _tree_fingerprint(root: Path) -> str:
    """Cheap identity of a directory given as dir:PATH (paths, sizes, times; not contents)."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.lstat(os.path.join(dirpath, name))
            entries.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_size,
                            st.st_mtime_ns, st.st_mode))
    return cache_key("dir", path=str(root.resolve()), entries=entries)


def _docker_daemon_reachable() -> bool:
    """True when a docker daemon answers on DOCKER_HOST or the default socket."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote daemon: let the docker client speak for itself
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2)
    try:
        sock.connect(host[len("unix://") :])
    except OSError:
        return False
    finally:
        sock.close()
    return True


def _resolve_image(ref: BaseRef, flavor: Flavor, release: Release, is_default: bool) -> BaseRef:
    """Pick where an image reference comes from; fall back to the flavor's bootstrap.

    Pulling from a docker daemon or a registry is not implemented yet, so an image reference
    can only be honoured through the flavor's bootstrap recipe, and only for its default image.
    """
    daemon = "a docker daemon is reachable" if _docker_daemon_reachable() else "no docker daemon"
    if is_default and release.bootstrap is not None:
        log.info(
            "base image %s: %s, but pulling images is not supported yet; "
            "bootstrapping %s/%s with %s instead",
            ref.target, daemon, flavor.name, release.bootstrap.suite, release.bootstrap.tool,
        )
        return BaseRef("bootstrap", f"{flavor.name}/{release.bootstrap.suite}")
    raise InputError(
        f"cannot get image {ref.target}: pulling from a docker daemon or registry is not "
        f"supported yet ({daemon})",
        hint=f"export it (skopeo copy docker-daemon:{ref.target} oci-archive:base.tar) and pass "
        "--base oci-archive:base.tar, or use dir:PATH or bootstrap:DISTRO/SUITE",
    )


def resolve_base(
    base: str | None, flavor: Flavor, release: Release, cache: Cache, *, pull: str = "missing"
) -> Base:
    """Resolve `base` (or the flavor's default image) into a root directory.

    `pull` has docker's meaning for what needs the network: `always` makes the base anew,
    `never` only accepts what is local or already cached.
    """
    ref = parse_ref(base) if base else parse_ref(release.image)
    if ref.transport == "docker":
        ref = _resolve_image(ref, flavor, release, is_default=base is None)

    if ref.transport == "dir":
        path = Path(ref.target)
        if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"--base {ref}: {path} is not a readable directory")
        return Base(path, _tree_fingerprint(path), str(ref))

    if ref.transport in ("oci", "oci-archive"):
        path = Path(ref.target)
        if not path.exists() or not os.access(path, os.R_OK):
            raise InputError(f"--base {ref}: {path} does not exist or is not readable")
        digest = image_config_digest(path, ref.tag)
        key = digest.replace(":", "-")

        def unpack(target: Path) -> None:
            with step(f"unpacking {ref}"):
                unpack_image(path, ref.tag, target)

        return Base(cache.get_or_make("rootfs", key, unpack), key, f"{ref} ({digest[:19]})")

    if ref.transport == "bootstrap":
        distro, _, suite = ref.target.partition("/")
        recipe = next(
            (r.bootstrap for r in flavor.releases.values()
             if r.bootstrap and r.bootstrap.suite == suite),
            None,
        )
        if distro != flavor.name or recipe is None:
            raise InputError(
                f"--base {ref}: flavor {flavor.name} has no bootstrap recipe for {ref.target}",
                hint=f"use bootstrap:{flavor.name}/<suite> with a suite from flavors/{flavor.name}.yaml",
            )
        key = cache_key("bootstrap", recipe=recipe)
        if pull == "never" and not cache.path("rootfs", key).is_dir():
            raise InputError(f"--base {ref} is not cached and --pull never forbids bootstrapping",
                             hint="run once with --pull missing")

        def make(target: Path) -> None:
            with step(f"bootstrapping {distro} {suite} with {recipe.tool}"):
                bootstrap_rootfs(recipe, target)

        return Base(cache.get_or_make("rootfs", key, make, refresh=pull == "always"), key, str(ref))

    raise InputError(f"--base {ref}: {ref.transport} bases are not supported yet",
                     hint="use oci:, oci-archive:, dir: or bootstrap:")
