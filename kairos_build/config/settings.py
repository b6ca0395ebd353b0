"""Every option of every verb, declared once: its key, kind, default, what it accepts, its help
and the verbs that take it. The command-line options, the config-file keys, `--set KEY=VALUE`,
the effective configuration printed by `--json` and the options table of docs/settings.md all
come from SETTINGS.

A key is also the option's name (`cache-dir` is `--cache-dir` and `cache-dir:` in a config
file), so a user who knows one knows the other. An option of one run of one verb (how long
`boot` waits, where `convert` writes) is `command_line_only`: no config file or `--set` gives
it, and it may share its name with another verb's (`--output`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kairos_build.boot.choices import (
    MACHINE_FIRMWARES,
    NICS,
    ROOT_EXPECTATIONS,
    SECUREBOOT_STATES,
    TPM_STATES,
    VERITY_STATES,
)
from kairos_build.check.rules import CHECK_MODES
from kairos_build.config.cloudconfig import validate_cloud_config
from kairos_build.core.errors import InputError
from kairos_build.core.flavors import load_flavor
from kairos_build.disk.layout import FIRMWARES, parse_partition_sizes, parse_size
from kairos_build.disk.squashfs import Compression
from kairos_build.source.refs import PLATFORMS, PULL_POLICIES

BOOT_MODES = ("secureboot", "trusted")
# `kairos-build genkey`: the certificates' name and days, as AuroraBoot's genkey makes them
# (its --expiration-in-days).
DEFAULT_KEY_NAME = "Kairos"
DEFAULT_EXPIRATION_DAYS = 365

# The verbs that make artifacts: `build` and one verb per installed format share their settings.
ARTIFACTS = "build"
# The verbs that resolve a base.
_SOURCE = ("unpack", "convert", "check", ARTIFACTS)
_FLAVORED = (*_SOURCE, "dockerfile")

# "text", "path", "flag", "list" (a repeatable option; a YAML list in a file), "int" or "float"
Kind = str
Value = str | Path | bool | int | float | tuple[str, ...] | None


@dataclass(frozen=True)
class Setting:
    key: str
    kind: Kind
    default: Value
    help: str
    verbs: tuple[str, ...]
    choices: tuple[str, ...] = ()
    # Turns a given value into the one used, or refuses it (InputError) saying what is allowed.
    check: Callable[[str, Value], Value] | None = None
    short: str | None = None
    # Given once before the verb too (`kairos-build --json iso ...`).
    is_global: bool = False
    # Former option names, still accepted on the command line (with a warning naming the
    # current one) and hidden from --help.
    former: tuple[str, ...] = ()
    # An option of one run of the verbs, given on their command line only (see the module's
    # docstring); the verb's function receives it as the keyword argument `name`.
    command_line_only: bool = False
    # Command line only: the option must be given (there is no default).
    required: bool = False
    # The keyword argument's name when it is not the key's (`--vars` is `vars_file`).
    dest: str | None = None

    @property
    def flag(self) -> str:
        return f"--{self.key}"

    @property
    def name(self) -> str:
        """The Python name (a keyword argument of the command)."""
        return self.dest or self.key.replace("-", "_")

    def allowed(self) -> str:
        """What the setting takes, for an error's hint and the docs/settings.md table."""
        if self.choices:
            return "|".join(self.choices)
        return {
            "text": "text",
            "path": "a path",
            "flag": "true|false",
            "list": "a list (repeatable)",
            "int": "a number",
            "float": "a number",
        }[self.kind]

    def takes(self, verb: str) -> bool:
        return verb in self.verbs

    def validate(self, value: Value) -> Value:
        """The value to use, or InputError naming what is allowed."""
        if value is None:
            return None
        if self.choices and value not in self.choices:
            raise InputError(f"{self.flag} {value!r} is not known", hint=f"use {self.allowed()}")
        return self.check(self.flag, value) if self.check else value


_VERSION = re.compile(r"^v?\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?$")


def normalize_version(version: str) -> str:
    """Kairos versions always carry a leading `v` (v1.2.3); a bad one is refused."""
    if not _VERSION.match(version):
        raise InputError(
            f"version {version!r} is not of the form v1.2.3",
            hint="pass --version v1.2.3 (the leading v is optional)",
        )
    return version if version.startswith("v") else f"v{version}"


def kernel_args(repeated: list[str] | None, line: str | None) -> tuple[str, ...]:
    """--kernel-arg A --kernel-arg B and --extra-cmdline 'C D' together: (A, B, C, D)."""
    try:
        words = shlex.split(line or "")
    except ValueError as exc:
        raise InputError(f"--extra-cmdline {line!r} does not parse: {exc}") from exc
    for word in [*(repeated or []), *words]:
        if not word.isprintable():
            raise InputError(f"kernel argument {word!r} has control characters")
    return (*(repeated or []), *words)


def _version(flag: str, value: Value) -> Value:
    return normalize_version(str(value))


def _flavor(flag: str, value: Value) -> Value:
    return load_flavor(str(value)).name


def _compression(flag: str, value: Value) -> Value:
    Compression.parse(str(value))  # refuses an unknown one; the arch is chosen later
    return value


def _size(flag: str, value: Value) -> Value:
    parse_size(str(value), flag)
    return value


def _partition_sizes(flag: str, value: Value) -> Value:
    parse_partition_sizes(list(value) if isinstance(value, tuple) else [str(value)])
    return value


def _kernel_args(flag: str, value: Value) -> Value:
    kernel_args(list(value) if isinstance(value, tuple) else [str(value)], None)
    return value


def _cmdline(flag: str, value: Value) -> Value:
    kernel_args(None, str(value))
    return value


def _folder(flag: str, value: Value) -> Value:
    path = Path(str(value))
    if not path.is_dir():
        raise InputError(f"{flag} {path} is not a folder", hint="give an existing folder")
    return path.resolve()


def _cloud_config(flag: str, value: Value) -> Value:
    return validate_cloud_config(Path(str(value)))


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "flavor",
        "text",
        "debian",
        "Flavor name (see `kairos-build flavors`).",
        _FLAVORED,
        check=_flavor,
        short="-f",
    ),
    Setting(
        "release", "text", None, "Flavor release, e.g. trixie or bookworm (default: the flavor's).", _FLAVORED
    ),
    Setting(
        "base",
        "text",
        None,
        "Base: docker://NAME, oci:DIR[:TAG], oci-archive:FILE[:TAG], "
        "dir:PATH, bootstrap:DISTRO/SUITE (default: the flavor's image).",
        (ARTIFACTS,),
    ),
    Setting("output", "path", Path("build"), "Directory for the artifacts.", (ARTIFACTS,), short="-o"),
    Setting(
        "version",
        "text",
        "v0.1.0",
        "Kairos version of the image (v1.2.3).",
        ("convert", "dockerfile", ARTIFACTS),
        check=_version,
    ),
    Setting(
        "cache-dir",
        "path",
        None,
        "Cache directory (default: $KAIROS_BUILD_CACHE or ~/.cache/kairos-build).",
        (*_SOURCE, "cache ls", "cache prune", "rebuild"),
        is_global=True,
    ),
    Setting(
        "pull",
        "text",
        "missing",
        "When to fetch the base anew.",
        _SOURCE,
        choices=PULL_POLICIES,
        is_global=True,
    ),
    Setting(
        "platform", "text", "linux/amd64", "Picks from multi-platform images.", _SOURCE, choices=PLATFORMS
    ),
    Setting("insecure-registry", "list", (), "Registry host reached over plain http.", _SOURCE),
    Setting(
        "no-bootstrap",
        "flag",
        False,
        "Fail instead of bootstrapping when the flavor's image cannot be had.",
        (ARTIFACTS,),
    ),
    Setting(
        "no-cache",
        "flag",
        False,
        "Make every stage anew (base unpack, conversion, "
        "squashfs, images) and replace its cache entry; pulled blobs, checked by their "
        "digest, are still reused and tags are resolved as --pull says.",
        ("unpack", "convert", ARTIFACTS, "rebuild"),
    ),
    Setting(
        "compression",
        "text",
        "zstd",
        "Squashfs compression: zstd (level 3), zstd:LEVEL "
        "(1-22), xz (with the arch's BCJ filter), gzip[:LEVEL], lz4, lzo.",
        (ARTIFACTS,),
        check=_compression,
        former=("--squashfs-compression",),
    ),
    Setting(
        "kernel-arg",
        "list",
        (),
        "Extra kernel argument for every boot entry.",
        (ARTIFACTS,),
        check=_kernel_args,
    ),
    Setting(
        "extra-cmdline",
        "text",
        None,
        "Extra kernel arguments for every boot entry, as one string ('quiet rd.debug').",
        (ARTIFACTS,),
        check=_cmdline,
    ),
    Setting(
        "overlay-iso",
        "path",
        None,
        "ISO: a folder whose files are added to the ISO's root.",
        (ARTIFACTS,),
        check=_folder,
    ),
    Setting(
        "overlay-rootfs",
        "path",
        None,
        "A folder whose files are added to the converted rootfs (every format).",
        (ARTIFACTS,),
        check=_folder,
    ),
    Setting(
        "cloud-config",
        "path",
        None,
        "A #cloud-config file: /config.yaml on the ISO, 90_custom.yaml on COS_OEM.",
        (ARTIFACTS,),
        check=_cloud_config,
    ),
    Setting(
        "firmware", "text", "both", "Disks: the firmware they boot under.", (ARTIFACTS,), choices=FIRMWARES
    ),
    Setting(
        "disk-size",
        "text",
        None,
        "Disks: total size, e.g. 16G (default: what the partitions need).",
        (ARTIFACTS,),
        check=_size,
    ),
    Setting(
        "partition-size",
        "list",
        (),
        "Disks: NAME=SIZE for efi, oem, recovery, state, persistent.",
        (ARTIFACTS,),
        check=_partition_sizes,
    ),
    Setting(
        "image-size",
        "text",
        None,
        "Disks: size of cOS/active.img (default: rootfs + 10% + 200 MiB).",
        (ARTIFACTS,),
        check=_size,
    ),
    Setting(
        "boot-mode",
        "text",
        "secureboot",
        "Disks: secureboot (shim, grub, the image's "
        "signed chain) or trusted (systemd-boot and signed UKIs, a dm-verity root; needs "
        "--keys).",
        (ARTIFACTS,),
        choices=BOOT_MODES,
    ),
    Setting(
        "keys",
        "path",
        None,
        "Trusted Boot: the folder of `kairos-build genkey` (or AuroraBoot's genkey).",
        (ARTIFACTS,),
        check=_folder,
    ),
    Setting(
        "compress", "flag", False, "qcow2: zstd-compressed clusters (about half the size).", (ARTIFACTS,)
    ),
    Setting(
        "json",
        "flag",
        False,
        "Print the result as JSON on stdout.",
        (*_SOURCE, "boot", "inject", "genkey", "flavors", "formats", "cache ls", "cache prune", "rebuild"),
        is_global=True,
    ),
    # The options of one run of one verb (command line only); on --help they come before the
    # verb's settings.
    Setting(
        "machine-firmware",
        "text",
        "bios",
        "bios (SeaBIOS), uefi (OVMF, Secure Boot off), uefi-secureboot (OVMF's Secure "
        "Boot build with Microsoft's keys enrolled, Secure Boot enforced) or "
        "uefi-secureboot-setup (the same build with no key: setup mode, where the "
        "image's loader may enroll its own keys and reset the guest).",
        ("boot",),
        choices=MACHINE_FIRMWARES,
        command_line_only=True,
        # The build's --firmware is what a disk boots under, this is what QEMU runs.
        former=("--firmware",),
        dest="firmware",
    ),
    Setting("timeout", "float", 600, "Seconds before giving up.", ("boot",), command_line_only=True),
    Setting("memory", "int", 2048, "Guest memory in MiB.", ("boot",), command_line_only=True),
    Setting(
        "expect-root",
        "text",
        None,
        "live|immutable|any: what root the booted system must report "
        "(default: live for ISOs, immutable for disks).",
        ("boot",),
        choices=ROOT_EXPECTATIONS,
        command_line_only=True,
    ),
    Setting(
        "expect-secureboot",
        "text",
        None,
        "enabled|disabled|unsupported|any: the Secure Boot state the guest must report "
        "(default: what the firmware gives: unsupported under bios, disabled under uefi, "
        "enabled under uefi-secureboot; under uefi-secureboot-setup enabled when the "
        "variable store holds a platform key after the boot, else disabled).",
        ("boot",),
        choices=SECUREBOOT_STATES,
        command_line_only=True,
    ),
    Setting(
        "expect-entry",
        "text",
        None,
        "The boot entry (kairos.entry=, e.g. live, live-config, active, recovery, "
        "netboot) the guest must report.",
        ("boot",),
        command_line_only=True,
    ),
    Setting(
        "nic",
        "text",
        "none",
        "none, or user: a virtio NIC on QEMU's restricted user-mode network (DHCP, no "
        "way out). A netboot always has its own NIC.",
        ("boot",),
        choices=NICS,
        command_line_only=True,
    ),
    Setting(
        "writable",
        "flag",
        False,
        "Let the guest write to the disk (default: a throw-away snapshot).",
        ("boot",),
        command_line_only=True,
    ),
    Setting(
        "as-disk",
        "flag",
        False,
        "Boot an ISO as a disk (as written to a USB stick), not as a CD.",
        ("boot",),
        command_line_only=True,
    ),
    Setting(
        "vars",
        "path",
        None,
        "UEFI firmwares: this file is the variable store (boot entries, enrolled "
        "keys), made from the firmware's template when missing and kept (default: a "
        "throw-away copy).",
        ("boot",),
        command_line_only=True,
        dest="vars_file",
    ),
    Setting(
        "tpm",
        "flag",
        False,
        "Give the guest a TPM 2.0 (swtpm, package swtpm).",
        ("boot",),
        command_line_only=True,
    ),
    Setting(
        "tpm-state",
        "path",
        None,
        "Keep the TPM's state in this directory (made when missing), so what a run "
        "sealed unlocks on the next one; implies --tpm (default: a throw-away "
        "state).",
        ("boot",),
        command_line_only=True,
    ),
    Setting(
        "expect-tpm",
        "text",
        "any",
        "2.0|none|any: the TPM the guest must report.",
        ("boot",),
        choices=TPM_STATES,
        command_line_only=True,
    ),
    Setting(
        "expect-verity",
        "text",
        "any",
        "verity|none|any: whether / must be verified by dm-verity.",
        ("boot",),
        choices=VERITY_STATES,
        command_line_only=True,
    ),
    Setting(
        "output",
        "text",
        None,
        "oci-archive:FILE[:TAG], oci:DIR[:TAG], dir:PATH or docker://NAME[:TAG]",
        ("convert",),
        short="-o",
        command_line_only=True,
    ),
    Setting(
        "dry-run",
        "flag",
        False,
        "Print the conversion plan (steps, exact commands) and stop.",
        ("convert",),
        command_line_only=True,
    ),
    Setting(
        "output",
        "path",
        None,
        "Build context directory to write.",
        ("dockerfile",),
        short="-o",
        command_line_only=True,
        required=True,
    ),
    Setting(
        "from",
        "text",
        None,
        "Base image (default: the flavor's).",
        ("dockerfile",),
        command_line_only=True,
        dest="from_image",
    ),
    Setting(
        "output",
        "path",
        Path("rebuild"),
        "Where the rebuilt artifact goes (not the checked one's folder).",
        ("rebuild",),
        short="-o",
        command_line_only=True,
    ),
    Setting(
        "mode",
        "text",
        "auto",
        "trusted|secureboot|auto",
        ("check",),
        choices=CHECK_MODES,
        command_line_only=True,
    ),
    Setting(
        "cloud-config",
        "path",
        None,
        "The #cloud-config file to embed.",
        ("inject",),
        command_line_only=True,
        required=True,
    ),
    Setting(
        "output",
        "path",
        None,
        "Write a new ISO here (default: change ISO in place).",
        ("inject",),
        short="-o",
        command_line_only=True,
    ),
    Setting(
        "name",
        "text",
        DEFAULT_KEY_NAME,
        "Names the certificates: CN=NAME-PK, NAME-KEK, NAME-db.",
        ("genkey",),
        command_line_only=True,
    ),
    Setting(
        "expiration-days",
        "int",
        DEFAULT_EXPIRATION_DAYS,
        "Days the certificates are valid (AuroraBoot's default).",
        ("genkey",),
        command_line_only=True,
    ),
    Setting(
        "key-bits",
        "int",
        2048,
        # genkey refuses another size itself, saying which firmware takes which.
        "RSA size of PK, KEK and db: 2048 or 4096 (the PCR key is always 2048).",
        ("genkey",),
        command_line_only=True,
    ),
    Setting(
        "force",
        "flag",
        False,
        "Replace the key files DIRECTORY already holds.",
        ("genkey",),
        command_line_only=True,
    ),
    Setting(
        "older-than",
        "float",
        7,
        "Only entries unused for this many days.",
        ("cache prune",),
        command_line_only=True,
    ),
    Setting(
        "all",
        "flag",
        False,
        "Remove every entry.",
        ("cache prune",),
        command_line_only=True,
        dest="all_entries",
    ),
    Setting(
        "print",
        "flag",
        False,
        "Only list the packages.",
        ("install-deps",),
        command_line_only=True,
        dest="print_only",
    ),
)

# The config-file and --set keys: one setting each.
BY_KEY = {s.key: s for s in SETTINGS if not s.command_line_only}


def default(key: str) -> Value:
    return BY_KEY[key].default


def settings_of(verb: str) -> tuple[Setting, ...]:
    """The settings a config file, `--set` and the verb's flags give it (no command-line-only
    option)."""
    return tuple(s for s in SETTINGS if s.takes(verb) and not s.command_line_only)


def options_of(verb: str) -> tuple[Setting, ...]:
    """The command-line-only options of `verb`."""
    return tuple(s for s in SETTINGS if s.takes(verb) and s.command_line_only)


def global_settings() -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.is_global)


def options_table() -> str:
    """The options table of docs/settings.md (Markdown), made from SETTINGS."""
    rows = ["| option / config key | takes | default | verbs | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        default_text = "" if s.default in (None, (), False) else f"`{s.default}`"
        verbs = ", ".join("build, iso, raw, ..." if v == ARTIFACTS else v for v in s.verbs)
        where = f"{verbs}; also before the verb" if s.is_global else verbs
        if s.command_line_only:
            where += "; command line only" + (", required" if s.required else "")
        cells = [f"`{s.flag}`", s.allowed(), default_text, where, s.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
