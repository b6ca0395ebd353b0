"""BuildConfig: everything a build needs, decided once up front and frozen."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kairos_build.cache import default_cache_dir
from kairos_build.disk.layout import DiskOptions
from kairos_build.disk.squashfs import Compression
from kairos_build.errors import InputError
from kairos_build.flavors import Flavor, Release, load_flavor

PULL_POLICIES = ("missing", "always", "never")
PLATFORMS = ("linux/amd64", "linux/arm64")
VARIANTS = ("core", "standard")
_VERSION = re.compile(r"^v?\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?$")


def normalize_version(version: str) -> str:
    """Kairos versions always carry a leading `v` (v1.2.3); a bad one is refused."""
    if not _VERSION.match(version):
        raise InputError(f"version {version!r} is not of the form v1.2.3",
                         hint="pass --version v1.2.3 (the leading v is optional)")
    return version if version.startswith("v") else f"v{version}"


@dataclass(frozen=True)
class BuildConfig:
    flavor: Flavor
    release: Release
    base: str | None = None
    output_dir: Path = Path("build")
    version: str = "v0.1.0"
    variant: str = "core"
    arch: str = "amd64"
    model: str = "generic"
    cache_dir: Path = field(default_factory=default_cache_dir)
    pull: str = "missing"
    # Parsed from --compression by make_config (for the arch: xz picks its BCJ filter).
    squashfs_compression: Compression = field(default_factory=Compression)
    extra_kernel_args: tuple[str, ...] = ()
    platform: str = "linux/amd64"
    insecure_registries: tuple[str, ...] = ()
    bootstrap_fallback: bool = True
    disk: DiskOptions = field(default_factory=DiskOptions)
    # A validated `#cloud-config` file: on COS_OEM of disks (90_custom.yaml).
    cloud_config: Path | None = None
    overlay_iso: Path | None = None  # extra files on the ISO's root
    overlay_rootfs: Path | None = None  # extra files in the rootfs (every format)
    # Make every stage anew (replacing its cache entry); digest-checked blobs are still reused.
    no_cache: bool = False

    def __post_init__(self) -> None:
        if self.pull not in PULL_POLICIES:
            raise InputError(f"--pull {self.pull!r} is not known", hint=f"use {'|'.join(PULL_POLICIES)}")
        if self.variant not in VARIANTS:
            raise InputError(f"variant {self.variant!r} is not known", hint=f"use {'|'.join(VARIANTS)}")
        if self.arch != "amd64":
            raise InputError(f"arch {self.arch!r} is not supported yet", hint="use amd64")
        if self.platform not in PLATFORMS:
            raise InputError(f"--platform {self.platform!r} is not known",
                             hint=f"use {' or '.join(PLATFORMS)}")

    @property
    def artifact_name(self) -> str:
        """The Kairos convention: kairos-FLAVOR-RELEASE-VARIANT-ARCH-MODEL-VERSION."""
        return (f"kairos-{self.flavor.name}-{self.release.flavor_release}-{self.variant}-"
                f"{self.arch}-{self.model}-{self.version}")


def make_config(flavor: str, release: str | None = None, **options: object) -> BuildConfig:
    """Load the flavor and build a frozen config; options left as None take the defaults."""
    loaded = load_flavor(flavor)
    given = {k: v for k, v in options.items() if v is not None}
    if "version" in given:
        given["version"] = normalize_version(str(given["version"]))
    if isinstance(given.get("squashfs_compression"), str):
        given["squashfs_compression"] = Compression.parse(
            str(given["squashfs_compression"]), arch=str(given.get("arch", "amd64")))
    return BuildConfig(flavor=loaded, release=loaded.release(release), **given)  # type: ignore[arg-type]
