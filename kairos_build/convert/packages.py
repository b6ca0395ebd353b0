"""Package managers behind one small interface: the commands each runs to install a list of
packages (refresh, install, clean), as data. The same command lists are run in a rootfs by a
conversion, printed by `convert --dry-run` and rendered into a Dockerfile."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kairos_build import rootfs
from kairos_build.convert.sandbox import run_in_root
from kairos_build.errors import InputError

Argv = tuple[str, ...]


@dataclass(frozen=True)
class PackageManager:
    name: str
    refresh: tuple[Argv, ...]  # fetch the package lists
    install: Argv  # install without questions and without recommended extras; names follow
    clean: tuple[Argv, ...]  # package lists and downloads are useless in an immutable image
    env: tuple[tuple[str, str], ...] = ()

    def commands(self, packages: Sequence[str], options: Sequence[str] = ()) -> list[Argv]:
        """Every command, in order; `options` (a flavor's install_options) go before the names."""
        return [*self.refresh, (*self.install, *options, *packages), *self.clean]

    def install_into(self, root: Path, packages: Sequence[str], options: Sequence[str] = ()) -> None:
        run_package_commands(root, self.commands(packages, options), self.env)


def run_package_commands(root: Path, commands: Sequence[Argv], env: Sequence[tuple[str, str]]) -> None:
    """Run a manager's commands in `root` with the host's DNS and no service starting."""
    with network_and_no_daemons(root):
        for argv in commands:
            run_in_root(root, argv, env=dict(env))


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
    install=("apt-get", "install", "-y", "-q", "--no-install-recommends",
             "-o", "Dpkg::Options::=--force-confold"),
    clean=(("apt-get", "clean"), ("sh", "-c", "rm -rf /var/lib/apt/lists/*")),
    env=(("DEBIAN_FRONTEND", "noninteractive"), ("DEBCONF_NONINTERACTIVE_SEEN", "true")),
)
# dnf 4 (EL9, Fedora 40) and dnf 5 (Fedora 41+) take the same words here.
DNF = PackageManager(
    "dnf",
    refresh=(("dnf", "-y", "makecache"),),
    install=("dnf", "-y", "install", "--setopt=install_weak_deps=False"),
    clean=(("dnf", "clean", "all"),),
)
ZYPPER = PackageManager(
    "zypper",
    # Global options come before the command word; keys of the distro's own repositories are
    # trusted on first use (the base image's repositories are the ones it ships).
    refresh=(("zypper", "--non-interactive", "--gpg-auto-import-keys", "refresh"),),
    install=("zypper", "--non-interactive", "install", "--no-recommends"),
    clean=(("zypper", "--non-interactive", "clean", "--all"),),
)
APK = PackageManager(
    "apk",
    # --no-cache fetches the indexes for this one command and keeps nothing: no refresh and no
    # clean step needed. apk has no recommends to skip.
    refresh=(),
    install=("apk", "add", "--no-cache", "--no-progress"),
    clean=(),
)
MANAGERS = {m.name: m for m in (APT, DNF, ZYPPER, APK)}


def package_manager(name: str) -> PackageManager:
    if name not in MANAGERS:
        raise InputError(f"package manager {name!r} is not supported",
                         hint=f"supported: {', '.join(MANAGERS)}")
    return MANAGERS[name]
