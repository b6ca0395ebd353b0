"""Flavors: one YAML file each under flavors/, validated on load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kairos_build.data import data_dir
from kairos_build.errors import InputError

PACKAGE_MANAGERS = ("apt", "dnf", "zypper", "apk")
INIT_SYSTEMS = ("systemd", "openrc")
BOOTLOADERS = ("grub", "systemd-boot")
INITRAMFS_TOOLS = ("dracut", "mkinitfs")
FAMILIES = ("debian", "redhat", "suse", "alpine")


@dataclass(frozen=True)
class Bootstrap:
    """How to make the base when no image can be had (mmdebstrap for Debian)."""

    tool: str
    suite: str
    variant: str = "minbase"


@dataclass(frozen=True)
class Release:
    name: str
    flavor_release: str
    image: str
    bootstrap: Bootstrap | None = None


@dataclass(frozen=True)
class Flavor:
    name: str
    pretty_name: str
    family: str
    package_manager: str
    init: str
    bootloader: str
    initramfs: str
    default_release: str
    releases: dict[str, Release]
    packages: dict[str, tuple[str, ...]]
    source: Path = field(compare=False)

    def release(self, name: str | None) -> Release:
        """The named release, or the default one; an unknown name lists the known ones."""
        wanted = name or self.default_release
        if wanted not in self.releases:
            raise InputError(
                f"flavor {self.name} has no release '{wanted}'",
                hint=f"choose one of: {', '.join(sorted(self.releases))}",
            )
        return self.releases[wanted]

    def all_packages(self) -> list[str]:
        """Every package of every role, in role order, without repeats."""
        seen: dict[str, None] = {}
        for names in self.packages.values():
            seen.update(dict.fromkeys(names))
        return list(seen)


_TOP_KEYS = {
    "name": "the flavor's name (same as the file name)",
    "pretty_name": "a human name",
    "family": f"one of {', '.join(FAMILIES)}",
    "package_manager": f"one of {', '.join(PACKAGE_MANAGERS)}",
    "init": f"one of {', '.join(INIT_SYSTEMS)}",
    "bootloader": f"one of {', '.join(BOOTLOADERS)}",
    "initramfs": f"one of {', '.join(INITRAMFS_TOOLS)}",
    "default_release": "a key of releases",
    "releases": "a mapping of release name to {flavor_release, image, bootstrap}",
    "packages": "a mapping of role to a list of package names",
}
_RELEASE_KEYS = {"flavor_release", "image", "bootstrap"}
_BOOTSTRAP_KEYS = {"tool", "suite", "variant"}


def _fail(path: Path, key: str, problem: str, fix: str) -> InputError:
    return InputError(f"{path}: key '{key}' {problem}", hint=fix)


def _check_keys(path: Path, where: str, data: dict[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            raise _fail(path, f"{where}{key}", "is not known", f"use one of: {', '.join(sorted(allowed))}")


def _choice(path: Path, data: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = data.get(key)
    if value not in choices:
        raise _fail(path, key, f"has value {value!r}", f"set it to one of: {', '.join(choices)}")
    return str(value)


def _parse_release(path: Path, name: str, data: Any) -> Release:
    where = f"releases.{name}."
    if not isinstance(data, dict):
        raise _fail(path, f"releases.{name}", "is not a mapping", "give flavor_release and image")
    _check_keys(path, where, data, _RELEASE_KEYS)
    for key in ("flavor_release", "image"):
        if not isinstance(data.get(key), str | int | float):
            raise _fail(path, where + key, "is missing", f"add {key}: to the release")
    bootstrap = None
    if "bootstrap" in data:
        raw = data["bootstrap"]
        if not isinstance(raw, dict) or "tool" not in raw or "suite" not in raw:
            raise _fail(path, where + "bootstrap", "is incomplete", "give {tool, suite, variant}")
        _check_keys(path, where + "bootstrap.", raw, _BOOTSTRAP_KEYS)
        bootstrap = Bootstrap(str(raw["tool"]), str(raw["suite"]), str(raw.get("variant", "minbase")))
    return Release(name, str(data["flavor_release"]), str(data["image"]), bootstrap)


def parse_flavor(path: Path) -> Flavor:
    """Load and validate one flavor file; every mistake names the file, the key and the fix."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read flavor file: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: a flavor file must be a YAML mapping")
    _check_keys(path, "", data, set(_TOP_KEYS))
    for key, meaning in _TOP_KEYS.items():
        if key not in data:
            raise _fail(path, key, "is missing", f"add {key}: {meaning}")
    if data["name"] != path.stem:
        raise _fail(path, "name", f"is {data['name']!r}", f"name it {path.stem!r} like the file")
    releases_raw = data["releases"]
    if not isinstance(releases_raw, dict) or not releases_raw:
        raise _fail(path, "releases", "is empty", "add at least one release")
    releases = {str(k): _parse_release(path, str(k), v) for k, v in releases_raw.items()}
    if data["default_release"] not in releases:
        raise _fail(path, "default_release", "names no release", f"use one of: {', '.join(releases)}")
    packages_raw = data["packages"]
    if not isinstance(packages_raw, dict) or not all(
        isinstance(v, list) and all(isinstance(p, str) for p in v) for v in packages_raw.values()
    ):
        raise _fail(path, "packages", "is not role -> list of names", "e.g. kernel: [linux-image-amd64]")
    return Flavor(
        name=str(data["name"]),
        pretty_name=str(data["pretty_name"]),
        family=_choice(path, data, "family", FAMILIES),
        package_manager=_choice(path, data, "package_manager", PACKAGE_MANAGERS),
        init=_choice(path, data, "init", INIT_SYSTEMS),
        bootloader=_choice(path, data, "bootloader", BOOTLOADERS),
        initramfs=_choice(path, data, "initramfs", INITRAMFS_TOOLS),
        default_release=str(data["default_release"]),
        releases=releases,
        packages={str(role): tuple(names) for role, names in packages_raw.items()},
        source=path,
    )


def flavor_names(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (directory or data_dir("flavors")).glob("*.yaml"))


def load_flavor(name: str, directory: Path | None = None) -> Flavor:
    """Load flavor `name`; an unknown name lists the known flavors."""
    folder = directory or data_dir("flavors")
    path = folder / f"{name}.yaml"
    if "/" in name or not path.is_file():
        known = ", ".join(flavor_names(folder)) or "none"
        raise InputError(f"unknown flavor '{name}'", hint=f"known flavors: {known}")
    return parse_flavor(path)
