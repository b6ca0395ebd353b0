"""Flavors: one YAML file each under flavors/, validated on load."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from kairos_build.core.data import data_dir
from kairos_build.core.errors import InputError

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
    # Roles this release installs differently (Ubuntu's HWE kernel is named after the release).
    packages: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Quirks:
    """What a distro does differently, as data (see _QUIRK_KEYS for the meaning of each)."""

    install_options: tuple[str, ...] = ()
    kernel_image: tuple[str, ...] = ("boot/vmlinuz-{kver}",)
    initrd: str = "boot/initrd.img-{kver}"
    services: dict[str, tuple[str, ...]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    install_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SecureBoot:
    """The image's own signed UEFI chain (see _SECURE_BOOT_KEYS): where its packages put each
    binary (first found wins), the name shim chains to, and the packages that provide them."""

    shim: tuple[str, ...]
    grub: tuple[str, ...]
    grub_cd: tuple[str, ...]
    mok_manager: tuple[str, ...] = ()
    shim_loads: str = "grubx64.efi"
    mok_name: str = "mmx64.efi"
    packages: dict[str, str] = field(default_factory=dict)


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
    quirks: Quirks = field(default_factory=Quirks)
    secure_boot: SecureBoot | None = None

    def release(self, name: str | None) -> Release:
        """The named release, or the default one; an unknown name lists the known ones."""
        wanted = name or self.default_release
        if wanted not in self.releases:
            raise InputError(
                f"flavor {self.name} has no release '{wanted}'",
                hint=f"choose one of: {', '.join(sorted(self.releases))}",
            )
        return self.releases[wanted]

    def all_packages(self, release: Release | None = None) -> list[str]:
        """Every package of every role, in role order, without repeats; `release` replaces the
        roles it names (a role only a release names comes last)."""
        roles = {**self.packages, **(release.packages if release else {})}
        seen: dict[str, None] = {}
        for names in roles.values():
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
    "releases": "a mapping of release name to {flavor_release, image, bootstrap, packages}",
    "packages": "a mapping of role to a list of package names",
}
_OPTIONAL_TOP_KEYS = {"quirks", "secure_boot"}
_RELEASE_KEYS = {"flavor_release", "image", "bootstrap", "packages"}
_BOOTSTRAP_KEYS = {"tool", "suite", "variant"}
# Every quirk, once: its meaning is also the fix an error message offers.
_QUIRK_KEYS = {
    "install_options": "a list of extra arguments for the install command, e.g. [--allowerasing]",
    "kernel_image": "a list of paths where the kernel package puts its image, first found wins; "
    "{kver} is the /lib/modules name, e.g. [boot/vmlinuz-{kver}]",
    "initrd": "the path the distro's own tools give the initramfs, e.g. boot/initrd-{kver}",
    "services": "for systemd {enable: [...], disable: [...]}; for openrc {RUNLEVEL: [...]}",
    "files": "a mapping of path to content, written into the rootfs before the packages",
    "install_env": "a mapping of environment variables for the install commands, e.g. "
    '{INITRD: "No"}: the kernel\'s own hook builds no initramfs (the conversion '
    "builds it once, in its initramfs stage)",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The signed chain, once: each meaning is also the fix an error message offers.
_SECURE_BOOT_KEYS = {
    "shim": "a list of paths of the Microsoft-signed shim, first found wins, "
    "e.g. [usr/lib/shim/shimx64.efi.signed]",
    "grub": "a list of paths of the distro-signed grub for disks, "
    "e.g. [usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed]",
    "grub_cd": "a list of paths of the signed grub for CDs (searches the medium), "
    "e.g. [usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed]; default: grub",
    "mok_manager": "a list of paths of shim's MokManager, e.g. [usr/lib/shim/mmx64.efi.signed]",
    "shim_loads": "the file name shim starts from its own folder, e.g. grubx64.efi (grub.efi on SUSE)",
    "mok_name": "the file name shim looks for MokManager under, e.g. mmx64.efi",
    "packages": "a mapping of piece (shim, grub, grub_cd, mok_manager, kernel) to the package "
    "that provides it, e.g. {shim: shim-signed}",
}
_SECURE_BOOT_PIECES = ("shim", "grub", "grub_cd", "mok_manager", "kernel")
SERVICE_KEYS = {
    "systemd": ("enable", "disable"),
    "openrc": ("sysinit", "boot", "default", "shutdown", "nonetwork"),
}
_NAME = re.compile(r"^[A-Za-z0-9@%+_.:-]+$")  # package and service names: no spaces, no shell


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


def _names(path: Path, key: str, value: Any, example: str) -> tuple[str, ...]:
    """A list of plain names (packages, services, options): strings without spaces."""
    if not isinstance(value, list) or not all(isinstance(v, str) and _NAME.match(v) for v in value):
        raise _fail(
            path, key, "is not a list of names without spaces", f"e.g. {key.rsplit('.', 1)[-1]}: [{example}]"
        )
    return tuple(value)


def _packages(path: Path, key: str, value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise _fail(path, key, "is not role -> list of names", "e.g. kernel: [linux-image-amd64]")
    return {
        str(role): _names(path, f"{key}.{role}", names, "linux-image-amd64") for role, names in value.items()
    }


def _relative_path(path: Path, key: str, value: Any) -> str:
    """A path inside the rootfs: relative, no `..`, so it can never name a host file."""
    if not isinstance(value, str) or not value or value.startswith("/") or ".." in value.split("/"):
        raise _fail(
            path,
            key,
            f"is {value!r}, not a path inside the rootfs",
            "write it relative to / without '..', e.g. boot/vmlinuz-{kver}",
        )
    return value


def _parse_quirks(path: Path, data: Any, init: str) -> Quirks:
    if not isinstance(data, dict):
        raise _fail(path, "quirks", "is not a mapping", f"use the keys: {', '.join(_QUIRK_KEYS)}")
    _check_keys(path, "quirks.", data, set(_QUIRK_KEYS))
    quirks = Quirks()
    if "install_options" in data:
        options = data["install_options"]
        if not isinstance(options, list) or not all(
            isinstance(o, str) and o.startswith("-") for o in options
        ):
            raise _fail(
                path, "quirks.install_options", "is not a list of options", _QUIRK_KEYS["install_options"]
            )
        quirks = replace(quirks, install_options=tuple(options))
    if "kernel_image" in data:
        images = data["kernel_image"]
        if not isinstance(images, list) or not images:
            raise _fail(path, "quirks.kernel_image", "is not a list of paths", _QUIRK_KEYS["kernel_image"])
        quirks = replace(
            quirks, kernel_image=tuple(_relative_path(path, "quirks.kernel_image", image) for image in images)
        )
    if "initrd" in data:
        initrd = _relative_path(path, "quirks.initrd", data["initrd"])
        if not initrd.startswith("boot/"):
            raise _fail(path, "quirks.initrd", "is not under boot/", _QUIRK_KEYS["initrd"])
        quirks = replace(quirks, initrd=initrd)
    if "services" in data:
        services = data["services"]
        allowed = SERVICE_KEYS[init]
        if not isinstance(services, dict):
            raise _fail(path, "quirks.services", "is not a mapping", _QUIRK_KEYS["services"])
        for key in services:
            if key not in allowed:
                raise _fail(
                    path,
                    f"quirks.services.{key}",
                    f"is not known for init {init}",
                    f"use one of: {', '.join(allowed)}",
                )
        quirks = replace(
            quirks,
            services={str(k): _names(path, f"quirks.services.{k}", v, "sshd") for k, v in services.items()},
        )
    if "files" in data:
        files = data["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise _fail(path, "quirks.files", "is not path -> text", _QUIRK_KEYS["files"])
        quirks = replace(
            quirks,
            files={_relative_path(path, f"quirks.files.{name}", name): text for name, text in files.items()},
        )
    if "install_env" in data:
        env = data["install_env"]
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str) for k, v in env.items()
        ):
            raise _fail(
                path, "quirks.install_env", "is not a mapping of NAME to text", _QUIRK_KEYS["install_env"]
            )
        quirks = replace(quirks, install_env=dict(env))
    return quirks


def _parse_secure_boot(path: Path, data: Any) -> SecureBoot:
    if not isinstance(data, dict):
        raise _fail(path, "secure_boot", "is not a mapping", f"use the keys: {', '.join(_SECURE_BOOT_KEYS)}")
    _check_keys(path, "secure_boot.", data, set(_SECURE_BOOT_KEYS))
    paths: dict[str, tuple[str, ...]] = {}
    for key in ("shim", "grub", "grub_cd", "mok_manager"):
        value = data.get(key, [] if key in ("grub_cd", "mok_manager") else None)
        if not isinstance(value, list) or (key in ("shim", "grub") and not value):
            raise _fail(path, f"secure_boot.{key}", "is not a list of paths", _SECURE_BOOT_KEYS[key])
        paths[key] = tuple(_relative_path(path, f"secure_boot.{key}", v) for v in value)
    names = {}
    for key, default in (("shim_loads", "grubx64.efi"), ("mok_name", "mmx64.efi")):
        value = data.get(key, default)
        if not isinstance(value, str) or not _NAME.match(value) or "/" in value:
            raise _fail(path, f"secure_boot.{key}", f"is {value!r}, not a file name", _SECURE_BOOT_KEYS[key])
        names[key] = value
    packages = data.get("packages", {})
    if not isinstance(packages, dict) or not all(
        k in _SECURE_BOOT_PIECES and isinstance(v, str) and _NAME.match(v) for k, v in packages.items()
    ):
        raise _fail(
            path, "secure_boot.packages", "is not piece -> package name", _SECURE_BOOT_KEYS["packages"]
        )
    return SecureBoot(
        shim=paths["shim"],
        grub=paths["grub"],
        grub_cd=paths["grub_cd"] or paths["grub"],
        mok_manager=paths["mok_manager"],
        shim_loads=names["shim_loads"],
        mok_name=names["mok_name"],
        packages={str(k): str(v) for k, v in packages.items()},
    )


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
    packages = _packages(path, where + "packages", data["packages"]) if "packages" in data else {}
    return Release(name, str(data["flavor_release"]), str(data["image"]), bootstrap, packages)


def parse_flavor(path: Path) -> Flavor:
    """Load and validate one flavor file; every mistake names the file, the key and the fix."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read flavor file: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: a flavor file must be a YAML mapping")
    _check_keys(path, "", data, set(_TOP_KEYS) | _OPTIONAL_TOP_KEYS)
    for key, meaning in _TOP_KEYS.items():
        if key not in data:
            raise _fail(path, key, "is missing", f"add {key}: {meaning}")
    if data["name"] != path.stem:
        raise _fail(path, "name", f"is {data['name']!r}", f"name it {path.stem!r} like the file")
    releases_raw = data["releases"]
    if not isinstance(releases_raw, dict) or not releases_raw:
        raise _fail(path, "releases", "is empty", "add at least one release")
    releases = {str(k): _parse_release(path, str(k), v) for k, v in releases_raw.items()}
    if str(data["default_release"]) not in releases:
        raise _fail(path, "default_release", "names no release", f"use one of: {', '.join(releases)}")
    init = _choice(path, data, "init", INIT_SYSTEMS)
    return Flavor(
        name=str(data["name"]),
        pretty_name=str(data["pretty_name"]),
        family=_choice(path, data, "family", FAMILIES),
        package_manager=_choice(path, data, "package_manager", PACKAGE_MANAGERS),
        init=init,
        bootloader=_choice(path, data, "bootloader", BOOTLOADERS),
        initramfs=_choice(path, data, "initramfs", INITRAMFS_TOOLS),
        default_release=str(data["default_release"]),
        releases=releases,
        packages=_packages(path, "packages", data["packages"]),
        source=path,
        quirks=_parse_quirks(path, data.get("quirks", {}), init),
        secure_boot=_parse_secure_boot(path, data["secure_boot"]) if "secure_boot" in data else None,
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
