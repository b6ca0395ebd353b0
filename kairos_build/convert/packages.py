"""Package managers behind one small interface: the commands each runs to install a list of
packages (refresh, install, clean), as data. The same command lists are run in a rootfs by a
conversion, printed by `convert --dry-run` and rendered into a Dockerfile.

A conversion keeps the downloaded packages in a cache shared by conversions (the cache
directory's `pkgcache/`, one folder per manager, flavor, release and architecture): the folder
is shown to the package manager under the sandbox's /tmp and named by its own options, so it
never becomes part of the image, and the manager checks every cached package against its
signed index before using it, as it does a download."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kairos_build.core import rootfs
from kairos_build.core.errors import InputError
from kairos_build.core.sandbox import Bind, run_in_root

Argv = tuple[str, ...]
# Where the shared package cache appears inside the sandbox (a tmpfs there: no mount point in
# the image's tree).
PACKAGE_CACHE = "/tmp/kairos-packages"


@dataclass(frozen=True)
class PackageManager:
    name: str
    refresh: tuple[Argv, ...]  # fetch the package lists
    install: Argv  # install without questions and without recommended extras; names follow
    clean: tuple[Argv, ...]  # package lists and downloads are useless in an immutable image
    env: tuple[tuple[str, str], ...] = ()
    # Options (after the program's name) that keep downloads in PACKAGE_CACHE, and those used
    # instead when there is no cache.
    cached: Argv = ()
    uncached: Argv = ()
    cache_dirs: tuple[str, ...] = ()  # folders the manager expects in its download folder
    refresh_cached: bool = False  # whether the refresh also uses the folder (dnf's metadata)

    def commands(
        self, packages: Sequence[str], options: Sequence[str] = (), *, cache: bool = False
    ) -> list[Argv]:
        """Every command, in order; `options` (a flavor's install_options) go before the names.
        With `cache`, the install (and the refresh where it fetches into the same folder)
        keeps its downloads in PACKAGE_CACHE."""
        refresh = [
            _after_program(argv, self.cached) if cache and self.refresh_cached else argv
            for argv in self.refresh
        ]
        install = _after_program(
            (*self.install, *options, *packages), self.cached if cache else self.uncached
        )
        return [*refresh, install, *self.clean]


def _after_program(argv: Argv, options: Argv) -> Argv:
    return (argv[0], *options, *argv[1:])


def run_package_commands(
    root: Path, commands: Sequence[Argv], env: Sequence[tuple[str, str]], package_cache: Path | None = None
) -> None:
    """Run a manager's commands in `root` with the host's DNS and no service starting, the
    shared package cache at PACKAGE_CACHE when given, and no fsync: a package stage killed
    half-way is thrown away and made again from its cached input."""
    binds: tuple[Bind, ...] = () if package_cache is None else ((package_cache, PACKAGE_CACHE),)
    with network_and_no_daemons(root):
        for argv in commands:
            run_in_root(root, argv, env=dict(env), binds=binds, no_sync=True)


@contextmanager
def network_and_no_daemons(root: Path) -> Iterator[None]:
    """For package installs: the host's DNS config, and no service started by a postinst.

    Both files are put back as the image had them afterwards (also on error or Ctrl-C).
    """
    resolv = "etc/resolv.conf"
    link = rootfs.resolve_in(root, resolv, follow_last=False)
    saved_link = os.readlink(link) if link.is_symlink() else None
    saved_text = None if saved_link is not None else rootfs.read_text(root, resolv)
    host_resolv = Path("/etc/resolv.conf")
    rootfs.write_text(root, resolv, host_resolv.read_text() if host_resolv.exists() else "")
    rootfs.write_text(root, "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode=0o755)
    try:
        yield
    finally:
        rootfs.remove(root, "usr/sbin/policy-rc.d")
        rootfs.remove(root, resolv)
        if saved_link is not None:
            rootfs.symlink(root, resolv, saved_link)
        elif saved_text is not None:
            rootfs.write_text(root, resolv, saved_text)


APT = PackageManager(
    "apt",
    refresh=(("apt-get", "update", "-q"),),
    install=(
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confold",
    ),
    clean=(("apt-get", "clean"), ("sh", "-c", "rm -rf /var/lib/apt/lists/*")),
    env=(("DEBIAN_FRONTEND", "noninteractive"), ("DEBCONF_NONINTERACTIVE_SEEN", "true")),
    # The archives folder only: the package lists stay the image's own (a list is trusted once
    # fetched, a .deb is checked against it each time). apt-get keeps what it downloads.
    cached=("-o", f"Dir::Cache::Archives={PACKAGE_CACHE}/"),
    cache_dirs=("partial",),
)
# dnf 4 (EL9, Fedora 40) and dnf 5 (Fedora 41+) take the same words here.
DNF = PackageManager(
    "dnf",
    refresh=(("dnf", "-y", "makecache"),),
    # Ten downloads at once (dnf's default is three); zypper already fetches in parallel; apt
    # and apk fetch one package after the other and have no such switch.
    install=(
        "dnf",
        "-y",
        "install",
        "--setopt=install_weak_deps=False",
        "--setopt=max_parallel_downloads=10",
    ),
    clean=(("dnf", "clean", "all"),),
    cached=("--setopt=keepcache=True", f"--setopt=cachedir={PACKAGE_CACHE}"),
    refresh_cached=True,
)
ZYPPER = PackageManager(
    "zypper",
    # Global options come before the command word; keys of the distro's own repositories are
    # trusted on first use (the base image's repositories are the ones it ships).
    refresh=(("zypper", "--non-interactive", "--gpg-auto-import-keys", "refresh"),),
    install=("zypper", "--non-interactive", "install", "--no-recommends"),
    clean=(("zypper", "--non-interactive", "clean", "--all"),),
    # zypper keeps a package only for repositories marked keeppackages.
    cached=("--pkg-cache-dir", PACKAGE_CACHE),
)
APK = PackageManager(
    "apk",
    # --no-cache fetches the indexes for this one command and keeps nothing: no refresh and no
    # clean step needed. apk has no recommends to skip. With a cache, its signed indexes and
    # packages go there (apk checks both on use).
    refresh=(),
    install=("apk", "add", "--no-progress"),
    clean=(),
    cached=("--cache-dir", PACKAGE_CACHE),
    uncached=("--no-cache",),
)
MANAGERS = {m.name: m for m in (APT, DNF, ZYPPER, APK)}


def package_manager(name: str) -> PackageManager:
    if name not in MANAGERS:
        raise InputError(
            f"package manager {name!r} is not supported", hint=f"supported: {', '.join(MANAGERS)}"
        )
    return MANAGERS[name]
