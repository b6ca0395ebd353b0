"""Requirement checks, statically from the files of a rootfs: nothing from the image runs.

Each rule says pass or fail and names the file that proves it. Trusted Boot needs systemd
>= 256 and systemd-boot; Secure-Boot-only needs systemd or openrc with grub; both need a
kernel with the EFI stub, exactly one kernel, and an initramfs tool (the Kairos seed rules,
which no Kairos tool checks at build time: kairos#3606, kairos#2766).

Secure Boot also wants the image's own signed chain: shim, grub and the kernel, each with an
Authenticode signature, found where the flavors' `secure_boot` sections say. Those rules do not
block a build (the exporters fall back to an unsigned grub and say so), but `kairos-build
check` fails on them.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from kairos_build.check.rpmdb import rpm_package_version
from kairos_build.core import pe, rootfs
from kairos_build.core.errors import CheckFailedError, HostileContentError, InputError
from kairos_build.core.flavors import SecureBoot, flavor_names, load_flavor

# `kairos-build check --mode`: the boot mode whose rules are checked (auto: trusted when it passes).
CHECK_MODES = ("trusted", "secureboot", "auto")
MODES = CHECK_MODES
TRUSTED_MIN_SYSTEMD = 256
_READ_LIMIT = 64 << 20  # bytes of a file we search at most (an EFI binary, a package database)

# Debian puts systemd's private library under the multiarch dir; Fedora (with its release:
# libsystemd-shared-256.11-1.fc41.so) and openSUSE under lib64; older systemd under lib.
_SHARED_LIB_DIRS = (
    "usr/lib/x86_64-linux-gnu/systemd",
    "usr/lib/aarch64-linux-gnu/systemd",
    "usr/lib64/systemd",
    "usr/lib/systemd",
    "lib64/systemd",
    "lib/systemd",
)
_SHARED_LIB = re.compile(r"^libsystemd-shared-(\d+)(?:[.~+-].*)?\.so$")
_SD_BOOT = ("usr/lib/systemd/boot/efi/systemd-bootx64.efi", "usr/lib/systemd/boot/efi/systemd-bootaa64.efi")
_SD_BOOT_VERSION = re.compile(rb"#### LoaderInfo: systemd-boot (\d+)")
_GRUB_EFI = (
    "usr/lib/grub/x86_64-efi/linux.mod",
    "usr/lib/grub/arm64-efi/linux.mod",
    "usr/share/grub2/x86_64-efi/linux.mod",
    "boot/efi/EFI/BOOT/BOOTX64.EFI",
)
_GRUB_EFI_GLOBS = ("boot/efi/EFI/*/grubx64.efi", "boot/efi/EFI/*/grubaa64.efi")
_GRUB_BIOS = ("usr/lib/grub/i386-pc/linux.mod", "usr/share/grub2/i386-pc/linux.mod")
_SYSTEMCTL = ("usr/bin/systemctl", "bin/systemctl")
_OPENRC = ("sbin/openrc", "usr/sbin/openrc", "usr/sbin/rc", "sbin/rc")
_INITRAMFS_TOOLS = {
    "dracut": ("usr/bin/dracut", "sbin/dracut", "usr/sbin/dracut"),
    "mkinitfs": ("sbin/mkinitfs", "usr/sbin/mkinitfs"),
}
_OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
# os-release IDs whose flavor file has another name.
_FLAVOR_OF_OS_ID = {
    "rocky": "rockylinux",
    "opensuse-leap": "opensuse",
    "opensuse-tumbleweed": "opensuse",
    "opensuse-slowroll": "opensuse",
}
_GENERIC_PACKAGE = {
    "shim": "the distro's signed shim package",
    "grub": "the distro's signed grub package",
    "kernel": "the distro's signed kernel package",
}


@dataclass(frozen=True)
class Rule:
    name: str
    ok: bool
    detail: str
    evidence: str | None = None  # the file (inside the rootfs) that proves it
    # A build stops on a failed blocking rule; a failed non-blocking one only fails `check`.
    blocking: bool = True


@dataclass(frozen=True)
class Report:
    mode: str
    rules: tuple[Rule, ...]
    ok: bool  # every rule passes, blocking or not
    facts: dict[str, object] = field(default_factory=dict)

    @property
    def buildable(self) -> bool:
        """Every blocking rule passes: a build may go on (without what the others prove)."""
        return all(r.ok for r in self.rules if r.blocking)


_file = rootfs.regular_file


def _first(root: Path, candidates: tuple[str, ...]) -> str | None:
    return next((rel for rel in candidates if _file(root, rel) is not None), None)


def _read(path: Path, limit: int = _READ_LIMIT) -> bytes:
    with path.open("rb") as handle:
        return handle.read(limit)


def _dpkg_version(root: Path, package: str) -> tuple[int | None, str | None]:
    """The upstream major version of an installed Debian package, from dpkg's status file."""
    status = _file(root, "var/lib/dpkg/status")
    if status is None:
        return None, None
    for stanza in _read(status).decode(errors="replace").split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", stanza, re.M) and re.search(
            r"^Status: .* installed$", stanza, re.M
        ):
            found = re.search(r"^Version: (?:\d+:)?(\d+)", stanza, re.M)
            if found:
                return int(found.group(1)), "/var/lib/dpkg/status"
    return None, None


def _apk_version(root: Path, package: str) -> tuple[int | None, str | None]:
    installed = _file(root, "lib/apk/db/installed")
    if installed is None:
        return None, None
    for stanza in _read(installed).decode(errors="replace").split("\n\n"):
        if re.search(rf"^P:{re.escape(package)}$", stanza, re.M):
            found = re.search(r"^V:(\d+)", stanza, re.M)
            if found:
                return int(found.group(1)), "/lib/apk/db/installed"
    return None, None


def _rpm_version(root: Path, package: str) -> tuple[int | None, str | None]:
    version, evidence = rpm_package_version(root, package)
    major = re.match(r"\d+", version or "")
    return (int(major.group()), evidence) if major else (None, None)


def systemd_version(root: Path) -> tuple[int | None, str | None]:
    """systemd's version from the name of its shared library, else a package database."""
    for folder in _SHARED_LIB_DIRS:
        try:
            directory = rootfs.resolve_in(root, folder)
        except HostileContentError:
            continue
        if directory.is_dir():
            for entry in sorted(directory.iterdir()):
                if match := _SHARED_LIB.match(entry.name):
                    return int(match.group(1)), f"/{folder}/{entry.name}"
    for reader in (_dpkg_version, _rpm_version, _apk_version):
        version, evidence = reader(root, "systemd")
        if version is not None:
            return version, evidence
    return None, None


def systemd_boot_version(root: Path) -> tuple[int | None, str | None]:
    """systemd-boot's EFI binary and its version, from the LoaderInfo string it embeds."""
    for rel in _SD_BOOT:
        if (path := _file(root, rel)) is not None:
            match = _SD_BOOT_VERSION.search(_read(path))
            return (int(match.group(1)) if match else 0), f"/{rel}"
    return None, None


def grub_efi(root: Path) -> str | None:
    if rel := _first(root, _GRUB_EFI):
        return f"/{rel}"
    for pattern in _GRUB_EFI_GLOBS:
        for match in sorted(root.glob(pattern)):
            if rootfs.resolve_in(root, str(match.relative_to(root))).is_file():
                return "/" + str(match.relative_to(root))
    return None


def init_system(root: Path) -> tuple[str | None, str | None]:
    """Kairos's rule: an executable systemctl means systemd; openrc's binary means openrc."""
    for rel in _SYSTEMCTL:
        path = _file(root, rel)
        if path is not None and path.stat().st_mode & stat.S_IXUSR:
            return "systemd", f"/{rel}"
    openrc = _first(root, _OPENRC)
    return ("openrc", f"/{openrc}") if openrc else (None, None)


def _flavour(version: str) -> str:
    """Alpine names a kernel's files after its flavour, the version's last word: 6.12.13-0-lts
    has /boot/vmlinuz-lts and /boot/config-lts."""
    return version.rsplit("-", 1)[-1]


def kernel_versions(root: Path) -> list[tuple[str, str]]:
    """(version, image path) for every module tree with a kernel image beside it: in /boot
    (Debian, Leap), in the module tree (Fedora, RHEL, Tumbleweed) or named by flavour (Alpine)."""
    found: list[tuple[str, str]] = []
    # usr/lib first: on a merged-/usr tree (lib -> usr/lib) the evidence names the real path.
    for modules in ("usr/lib/modules", "lib/modules"):
        directory = rootfs.resolve_in(root, modules)
        if not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            image = _first(
                root,
                (
                    f"boot/vmlinuz-{entry.name}",
                    f"{modules}/{entry.name}/vmlinuz",
                    f"boot/vmlinuz-{_flavour(entry.name)}",
                ),
            )
            if entry.is_dir() and image and entry.name not in {v for v, _ in found}:
                found.append((entry.name, f"/{image}"))
    return found


def efi_stub(root: Path, version: str, image: str) -> tuple[bool, str]:
    """CONFIG_EFI_STUB from the kernel config; else the image's PE header and boot header."""
    for rel in (
        f"boot/config-{version}",
        f"lib/modules/{version}/config",
        f"usr/lib/modules/{version}/config",
        f"boot/config-{_flavour(version)}",
    ):
        if (config := _file(root, rel)) is not None:
            text = _read(config).decode(errors="replace")
            return bool(re.search(r"^CONFIG_EFI_STUB=y$", text, re.M)), f"/{rel}"
    path = _file(root, image.lstrip("/"))
    header = _read(path, 4096) if path else b""
    return is_efi_stub_image(header), image


def is_efi_stub_image(header: bytes) -> bool:
    """A bzImage that is also a PE file: `MZ`, `PE\\0\\0` at e_lfanew, Linux's `HdrS` at 0x202.

    libmagic calls such a kernel "Linux kernel x86 boot executable bzImage" and never says PE,
    so the PE structure is checked by hand (python-magic only names what kind of file it is).
    """
    if len(header) < 0x240 or header[:2] != b"MZ":
        return False
    pe_offset = int.from_bytes(header[0x3C:0x40], "little")
    is_pe = pe_offset + 4 <= len(header) and header[pe_offset : pe_offset + 4] == b"PE\0\0"
    is_linux = header[0x202:0x206] == b"HdrS" or _magic_says_linux(header)
    return is_pe and is_linux


def _magic_says_linux(header: bytes) -> bool:
    try:
        import magic
    except ImportError:  # libmagic missing: the header check above decides alone
        return False
    return "Linux kernel" in str(magic.from_buffer(header))


def initramfs_tool(root: Path) -> tuple[str | None, str | None]:
    for tool, candidates in _INITRAMFS_TOOLS.items():
        if rel := _first(root, candidates):
            return tool, f"/{rel}"
    return None, None


def _common_rules(root: Path) -> list[Rule]:
    rules = []
    kernels = kernel_versions(root)
    if len(kernels) == 1:
        version, image = kernels[0]
        rules.append(Rule("exactly one kernel", True, f"kernel {version}", image))
        stub, evidence = efi_stub(root, version, image)
        rules.append(
            Rule(
                "kernel has the EFI stub",
                stub,
                "CONFIG_EFI_STUB / PE header found" if stub else "no EFI stub",
                evidence,
            )
        )
    else:
        names = ", ".join(v for v, _ in kernels) or "none"
        rules.append(Rule("exactly one kernel", False, f"found {len(kernels)} ({names})", "/lib/modules"))
        rules.append(Rule("kernel has the EFI stub", False, "no single kernel to check"))
    tool, tool_evidence = initramfs_tool(root)
    rules.append(
        Rule("an initramfs tool", tool is not None, tool or "neither dracut nor mkinitfs", tool_evidence)
    )
    return rules


def _trusted_rules(root: Path) -> list[Rule]:
    version, evidence = systemd_version(root)
    enough = version is not None and version >= TRUSTED_MIN_SYSTEMD
    if version is None:
        detail = "no systemd found"
    else:
        detail = f"systemd {version}" + ("" if enough else f" < {TRUSTED_MIN_SYSTEMD}")
    boot, boot_evidence = systemd_boot_version(root)
    return [
        Rule(f"systemd >= {TRUSTED_MIN_SYSTEMD}", enough, detail, evidence),
        Rule(
            "systemd-boot EFI binary",
            boot is not None,
            f"systemd-boot {boot}" if boot else "not installed",
            boot_evidence,
        ),
    ]


def os_release_ids(root: Path) -> list[str]:
    """ID, then the words of ID_LIKE, from the tree's os-release."""
    rel = _first(root, _OS_RELEASE)
    if rel is None or (path := _file(root, rel)) is None:
        return []
    ids: list[str] = []
    for line in _read(path, 64 << 10).decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("ID", "ID_LIKE"):
            words = value.strip().strip("'\"").split()
            ids += words if key.strip() == "ID_LIKE" else words[:1]
    return ids


def secure_boot_flavor(root: Path) -> tuple[str | None, list[tuple[str, SecureBoot]]]:
    """The name of the flavor the tree's os-release names (None when none does) and every
    flavor's secure_boot section, that flavor's first."""
    sections = [
        (name, flavor.secure_boot)
        for name in flavor_names()
        if (flavor := load_flavor(name)).secure_boot is not None
    ]
    names = [name for name, _ in sections]
    wanted = next(
        (_FLAVOR_OF_OS_ID.get(i, i) for i in os_release_ids(root) if _FLAVOR_OF_OS_ID.get(i, i) in names),
        None,
    )
    return wanted, sorted(sections, key=lambda item: item[0] != wanted)


def _signed_piece(
    root: Path, rule: str, candidates: list[str], expected: tuple[str, ...], package: str
) -> Rule:
    """The first candidate that is signed, else the first that exists, judged by its signature;
    when none exists, the detail names where the tree's own flavor (`expected`) puts it."""
    found = [(rel, path) for rel in dict.fromkeys(candidates) if (path := _file(root, rel)) is not None]
    judged = [(rel, pe.authenticode_signers(path)) for rel, path in found]
    signed = next(((rel, signers) for rel, signers in judged if signers), None)
    if signed is not None:
        return Rule(rule, True, "signed by " + ", ".join(signed[1]), f"/{signed[0]}", blocking=False)
    if not judged:
        looked = ", ".join(f"/{c}" for c in (expected or candidates[:3]))
        return Rule(rule, False, f"not found (looked for {looked}); install {package}", blocking=False)
    rel, signers = judged[0]
    what = "not an EFI binary" if signers is None else "has no Authenticode signature"
    return Rule(rule, False, f"{what}; install {package}", f"/{rel}", blocking=False)


def _chain_rules(root: Path) -> list[Rule]:
    """The image's own signed chain: shim, grub, the kernel (nothing from the image runs)."""
    wanted, sections = secure_boot_flavor(root)
    own = sections[0][1] if wanted else None

    def package(piece: str) -> str:
        return own.packages.get(piece, _GENERIC_PACKAGE[piece]) if own else _GENERIC_PACKAGE[piece]

    rules = [
        _signed_piece(
            root,
            "signed shim",
            [p for _, s in sections for p in s.shim],
            own.shim if own else (),
            package("shim"),
        ),
        _signed_piece(
            root,
            "signed grub",
            [p for _, s in sections for p in s.grub],
            own.grub if own else (),
            package("grub"),
        ),
    ]
    kernels = kernel_versions(root)
    if len(kernels) == 1:
        image = kernels[0][1].lstrip("/")
        rules.append(_signed_piece(root, "kernel signed", [image], (image,), package("kernel")))
    else:
        rules.append(Rule("kernel signed", False, "no single kernel to check", blocking=False))
    return rules


def _secureboot_rules(root: Path) -> list[Rule]:
    init, evidence = init_system(root)
    grub = grub_efi(root)
    return [
        Rule("systemd or openrc in charge", init is not None, init or "neither found", evidence),
        Rule("grub for EFI", grub is not None, "found" if grub else "no grub EFI modules or binary", grub),
        *_chain_rules(root),
    ]


def check_rootfs(root: Path, mode: str) -> Report:
    """The rules of `mode` on the tree at `root`; `auto` picks trusted when it passes."""
    if mode not in MODES:
        raise InputError(f"--mode {mode!r} is not known", hint=f"use {'|'.join(MODES)}")
    common = _common_rules(root)
    version, _ = systemd_version(root)
    facts: dict[str, object] = {
        "systemd": version,
        "init": init_system(root)[0],
        "kernels": [v for v, _ in kernel_versions(root)],
    }
    reports = {}
    for candidate in ("trusted", "secureboot") if mode == "auto" else (mode,):
        specific = _trusted_rules(root) if candidate == "trusted" else _secureboot_rules(root)
        rules = tuple(specific + common)
        reports[candidate] = Report(candidate, rules, all(r.ok for r in rules), facts)
    if mode == "auto":
        return reports["trusted"] if reports["trusted"].ok else reports["secureboot"]
    return reports[mode]


def describe(report: Report) -> str:
    lines = []
    for rule in report.rules:
        proof = f" ({rule.evidence})" if rule.evidence else ""
        optional = "" if rule.ok or rule.blocking else " [builds go on without it]"
        lines.append(f"{'pass' if rule.ok else 'FAIL'}  {rule.name}: {rule.detail}{proof}{optional}")
    return "\n".join(lines)


def require_mode(root: Path, mode: str, what: str) -> Report:
    """Stop with exit code 3, naming each failed blocking rule, when `root` cannot boot in
    `mode`; a failed non-blocking rule (the signed chain) is left to the caller's fallback."""
    report = check_rootfs(root, mode)
    if not report.buildable:
        failed = "; ".join(f"{r.name}: {r.detail}" for r in report.rules if not r.ok and r.blocking)
        raise CheckFailedError(
            f"{what} needs a {mode} capable image, but: {failed}",
            hint="run `kairos-build check` on the base for the full report",
        )
    return report
