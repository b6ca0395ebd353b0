"""Package managers behind one small interface: install a list of packages inside a rootfs."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from kairos_build.convert.chroot import network_and_no_daemons, run_in_root
from kairos_build.errors import InputError


class PackageManager(Protocol):
    def install(self, root: Path, packages: list[str]) -> None: ...


class Apt:
    env = {"DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}

    def install(self, root: Path, packages: list[str]) -> None:
        with network_and_no_daemons(root):
            run_in_root(root, ["apt-get", "update", "-q"], env=self.env)
            run_in_root(
                root,
                ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                 "-o", "Dpkg::Options::=--force-confold", *packages],
                env=self.env,
            )
            # Package lists and downloaded .debs are useless in an immutable image.
            run_in_root(root, ["apt-get", "clean"], env=self.env)
            run_in_root(root, ["sh", "-c", "rm -rf /var/lib/apt/lists/*"], env=self.env)


_MANAGERS: dict[str, type[Apt]] = {"apt": Apt}


def package_manager(name: str) -> PackageManager:
    if name not in _MANAGERS:
        raise InputError(f"package manager {name!r} is not supported yet",
                         hint=f"supported: {', '.join(_MANAGERS)}")
    return _MANAGERS[name]()
