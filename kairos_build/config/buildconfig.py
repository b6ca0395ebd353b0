"""BuildConfig: everything a build needs, decided once up front and frozen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kairos_build.config.configfile import CommandLine, effective, nearest_key, resolve_settings
from kairos_build.config.settings import (
    ARTIFACTS,
    BOOT_MODES,
    Setting,
    Value,
    default,
    kernel_args,
    settings_of,
)
from kairos_build.core.cache import default_cache_dir
from kairos_build.core.errors import InputError
from kairos_build.core.flavors import Flavor, Release, load_flavor
from kairos_build.disk.layout import DiskOptions, parse_partition_sizes, parse_size
from kairos_build.disk.squashfs import Compression
from kairos_build.source.refs import PLATFORMS, PULL_POLICIES

VARIANTS = ("core", "standard")


@dataclass(frozen=True)
class BuildConfig:
    flavor: Flavor
    release: Release
    base: str | None = None
    output_dir: Path = Path(str(default("output")))
    version: str = str(default("version"))
    variant: str = "core"
    arch: str = "amd64"
    model: str = "generic"
    cache_dir: Path = field(default_factory=default_cache_dir)
    pull: str = str(default("pull"))
    # Parsed from --compression by config_from (for the arch: xz picks its BCJ filter).
    squashfs_compression: Compression = field(default_factory=Compression)
    extra_kernel_args: tuple[str, ...] = ()
    platform: str = str(default("platform"))
    insecure_registries: tuple[str, ...] = ()
    bootstrap_fallback: bool = True
    disk: DiskOptions = field(default_factory=DiskOptions)
    # A validated `#cloud-config` file: on COS_OEM of disks (90_custom.yaml).
    cloud_config: Path | None = None
    overlay_iso: Path | None = None  # extra files on the ISO's root
    overlay_rootfs: Path | None = None  # extra files in the rootfs (every format)
    # Make every stage anew (replacing its cache entry); digest-checked blobs are still reused.
    no_cache: bool = False
    # Disks: "secureboot" (shim -> grub -> kernel) or "trusted" (systemd-boot -> signed UKIs
    # -> a dm-verity root), the latter signed with the keys in `keys` (kairos-build genkey).
    boot_mode: str = "secureboot"
    keys: Path | None = None
    # Export anew even when the artifact cache holds the artifact (`rebuild`: the stages
    # before it are still taken from the cache by their keys).
    fresh_artifact: bool = False
    # The effective settings as given (settings.SETTINGS keys), for the build manifest.
    settings: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pull not in PULL_POLICIES:
            raise InputError(f"--pull {self.pull!r} is not known", hint=f"use {'|'.join(PULL_POLICIES)}")
        if self.variant not in VARIANTS:
            raise InputError(f"variant {self.variant!r} is not known", hint=f"use {'|'.join(VARIANTS)}")
        if self.arch != "amd64":
            raise InputError(f"arch {self.arch!r} is not supported yet", hint="use amd64")
        if self.boot_mode not in BOOT_MODES:
            raise InputError(
                f"--boot-mode {self.boot_mode!r} is not known", hint=f"use {' or '.join(BOOT_MODES)}"
            )
        if self.boot_mode == "trusted" and self.keys is None:
            raise InputError(
                "--boot-mode trusted needs the keys to sign with",
                hint="make them once with 'kairos-build genkey DIR', then give --keys DIR",
            )
        if self.platform not in PLATFORMS:
            raise InputError(
                f"--platform {self.platform!r} is not known", hint=f"use {' or '.join(PLATFORMS)}"
            )

    @property
    def artifact_name(self) -> str:
        """The Kairos convention: kairos-FLAVOR-RELEASE-VARIANT-ARCH-MODEL-VERSION."""
        return (
            f"kairos-{self.flavor.name}-{self.release.flavor_release}-{self.variant}-"
            f"{self.arch}-{self.model}-{self.version}"
        )


def config_of(given: Mapping[str, object], verb: str = ARTIFACTS) -> BuildConfig:
    """The BuildConfig of settings given by key as a user gives them, e.g. `{"flavor": "alpine",
    "partition-size": ["state=8G"], "cache-dir": folder}`, resolved and checked as the
    command line's flags are (for code and tests); None is not given."""
    known = {s.key: s for s in settings_of(verb)}
    flags: dict[str, Value] = {}
    for key, value in given.items():
        if key not in known:
            raise InputError(f"{key!r} is not a setting of {verb}", hint=nearest_key(key))
        if value is not None:
            flags[key] = _as_flag(known[key], value)
    return config_from(resolve_settings(verb, CommandLine(flags=flags)))


def _as_flag(setting: Setting, value: object) -> Value:
    """A value as Typer hands it over for the setting's option."""
    if setting.kind == "list":
        return tuple(str(v) for v in value) if isinstance(value, list | tuple) else (str(value),)
    if setting.kind == "path":
        return Path(str(value))
    if setting.kind == "flag":
        return bool(value)
    return str(value)


def _text(values: Mapping[str, Value], key: str) -> str | None:
    value = values.get(key)
    return None if value is None else str(value)


def _path(values: Mapping[str, Value], key: str) -> Path | None:
    value = values.get(key)
    return value if isinstance(value, Path) else None


def _words(values: Mapping[str, Value], key: str) -> tuple[str, ...]:
    value = values.get(key)
    return value if isinstance(value, tuple) else ()


def config_from(values: Mapping[str, Value], **fixed: Any) -> BuildConfig:
    """The BuildConfig of resolved settings (kairos_build.config.configfile.resolve_settings); `fixed`
    sets fields a verb decides itself (the base of `unpack REF`)."""
    flavor = load_flavor(str(values.get("flavor") or default("flavor")))
    disk_size, image_size = _text(values, "disk-size"), _text(values, "image-size")
    disk = DiskOptions(
        firmware=str(values.get("firmware") or default("firmware")),
        disk_size=parse_size(disk_size, "--disk-size") if disk_size else None,
        sizes=parse_partition_sizes(list(_words(values, "partition-size"))),
        image_size=parse_size(image_size, "--image-size") if image_size else None,
        compress=values.get("compress") is True,
    )
    compression = Compression.parse(str(values.get("compression") or default("compression")))
    options: dict[str, Any] = {
        "base": _text(values, "base"),
        "output_dir": _path(values, "output"),
        "version": _text(values, "version"),
        "cache_dir": _path(values, "cache-dir"),
        "pull": _text(values, "pull"),
        "platform": _text(values, "platform"),
        "squashfs_compression": compression,
        "extra_kernel_args": kernel_args(list(_words(values, "kernel-arg")), _text(values, "extra-cmdline")),
        "insecure_registries": _words(values, "insecure-registry"),
        "bootstrap_fallback": values.get("no-bootstrap") is not True,
        "disk": disk,
        "cloud_config": _path(values, "cloud-config"),
        "overlay_iso": _path(values, "overlay-iso"),
        "overlay_rootfs": _path(values, "overlay-rootfs"),
        "no_cache": values.get("no-cache") is True,
        "boot_mode": _text(values, "boot-mode"),
        "keys": _path(values, "keys"),
        **fixed,
    }
    options["settings"] = effective(values)
    return replace(
        BuildConfig(flavor=flavor, release=flavor.release(_text(values, "release"))),
        **{k: v for k, v in options.items() if v is not None},
    )
