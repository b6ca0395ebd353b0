"""Requirement checks on fake trees laid out like the real distros (paths, library names,
package databases as rpm/apk write them): each rule's verdict and the evidence it names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kairos_build.check.rpmdb import BadHeader, header_strings, rpm_package_version
from kairos_build.check.rules import check_rootfs, systemd_version
from tests.unit.rpmhelp import (
    NAME,
    RELEASE,
    VERSION,
    header_blob,
    write_ndb_rpmdb,
    write_sqlite_rpmdb,
)
from tests.unit.test_checks import efi_stub_header


def put(root: Path, rel: str, data: bytes = b"", mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def merged_usr(root: Path) -> None:
    """bin, sbin, lib, lib64 as links into /usr, as on Fedora, EL9, Tumbleweed."""
    for name in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(f"usr/{name}")


def evidence(root: Path, mode: str) -> dict[str, tuple[bool, str | None]]:
    """The blocking rules (the signed chain's are in test_checks_secureboot.py)."""
    return {r.name: (r.ok, r.evidence) for r in check_rootfs(root, mode).rules if r.blocking}


FEDORA_KVER = "6.11.4-301.fc41.x86_64"


def fedora_tree(root: Path, *, shared_lib: bool = True, stub: bool = True) -> Path:
    """Fedora 41: systemd 256 with its release in the library name, the rpmdb in
    /usr/lib/sysimage/rpm (/var/lib/rpm links there), the kernel only in its module tree."""
    merged_usr(root)
    put(root, "usr/bin/systemctl", b"\x7fELF", 0o755)
    if shared_lib:
        put(root, "usr/lib64/systemd/libsystemd-shared-256.11-1.fc41.so")
    write_sqlite_rpmdb(
        root / "usr/lib/sysimage/rpm/rpmdb.sqlite",
        [
            header_blob("bash", "5.2.32", "1.fc41"),
            header_blob("systemd-libs", "999.1", "1.fc41"),  # a name that starts the same
            header_blob("systemd", "256.11", "1.fc41"),
        ],
    )
    (root / "var/lib").mkdir(parents=True)
    (root / "var/lib/rpm").symlink_to("../../usr/lib/sysimage/rpm")
    modules = f"usr/lib/modules/{FEDORA_KVER}"
    put(root, f"{modules}/vmlinuz", efi_stub_header() if stub else b"\x7fELF" + bytes(4092))
    put(root, f"{modules}/modules.dep")
    put(root, "usr/lib/grub/x86_64-efi/linux.mod")
    put(root, "boot/efi/EFI/fedora/grubx64.efi", b"MZ")
    put(root, "usr/bin/dracut", b"#!/bin/bash", 0o755)
    return root


def test_fedora_tree_systemd_from_its_lib64_library_and_kernel_from_the_module_tree(tmp_path: Path) -> None:
    root = fedora_tree(tmp_path)
    assert systemd_version(root) == (256, "/usr/lib64/systemd/libsystemd-shared-256.11-1.fc41.so")
    rules = evidence(root, "secureboot")
    assert rules["exactly one kernel"] == (True, f"/usr/lib/modules/{FEDORA_KVER}/vmlinuz")
    # no config file in the module tree: the PE header of the image proves the stub
    assert rules["kernel has the EFI stub"] == (True, f"/usr/lib/modules/{FEDORA_KVER}/vmlinuz")
    assert rules["systemd or openrc in charge"] == (True, "/usr/bin/systemctl")
    assert rules["grub for EFI"] == (True, "/usr/lib/grub/x86_64-efi/linux.mod")
    assert rules["an initramfs tool"] == (True, "/usr/bin/dracut")
    trusted = evidence(root, "trusted")
    assert trusted["systemd >= 256"][0] and not trusted["systemd-boot EFI binary"][0]


def test_fedora_tree_without_the_library_reads_the_sqlite_rpmdb(tmp_path: Path) -> None:
    root = fedora_tree(tmp_path, shared_lib=False)
    assert systemd_version(root) == (256, "/usr/lib/sysimage/rpm/rpmdb.sqlite")
    assert not list(root.rglob("*-wal")) and not list(root.rglob("*-shm"))  # read-only, no journal


def test_redhat_kernel_without_the_efi_stub_fails_with_the_image_as_evidence(tmp_path: Path) -> None:
    rules = evidence(fedora_tree(tmp_path, stub=False), "secureboot")
    assert rules["kernel has the EFI stub"] == (False, f"/usr/lib/modules/{FEDORA_KVER}/vmlinuz")
    assert [name for name, (ok, _) in rules.items() if not ok] == ["kernel has the EFI stub"]


def test_rocky9_tree_systemd_252_from_var_lib_rpm_boots_secure_not_trusted(tmp_path: Path) -> None:
    root = tmp_path
    merged_usr(root)
    put(root, "usr/bin/systemctl", b"\x7fELF", 0o755)
    write_sqlite_rpmdb(
        root / "var/lib/rpm/rpmdb.sqlite", [header_blob("systemd", "252", "46.el9_5.2.0.1", epoch=None)]
    )
    kver = "5.14.0-503.14.1.el9_5.x86_64"
    put(root, f"usr/lib/modules/{kver}/vmlinuz", b"MZ")
    put(root, f"boot/vmlinuz-{kver}", b"MZ")
    put(root, f"boot/config-{kver}", b"CONFIG_EFI_STUB=y\n")
    put(root, "boot/efi/EFI/rocky/grubx64.efi", b"MZ")
    put(root, "usr/sbin/dracut", b"#!/bin/bash", 0o755)
    trusted = evidence(root, "trusted")
    assert trusted["systemd >= 256"] == (False, "/var/lib/rpm/rpmdb.sqlite")
    secure = evidence(root, "secureboot")
    assert all(ok for ok, _ in secure.values()), secure
    assert secure["exactly one kernel"] == (True, f"/boot/vmlinuz-{kver}")
    assert secure["kernel has the EFI stub"] == (True, f"/boot/config-{kver}")
    assert secure["grub for EFI"] == (True, "/boot/efi/EFI/rocky/grubx64.efi")
    assert check_rootfs(root, "auto").mode == "secureboot"


def test_tumbleweed_tree_reads_the_ndb_database(tmp_path: Path) -> None:
    """openSUSE builds rpm without sqlite: its database is ndb's Packages.db."""
    root = tmp_path
    merged_usr(root)
    put(root, "usr/bin/systemctl", b"\x7fELF", 0o755)
    write_ndb_rpmdb(
        root / "usr/lib/sysimage/rpm/Packages.db",
        [
            header_blob("aaa_base", "84.87+git20241101", "1.1"),
            header_blob("systemd", "256.8", "2.1"),
            header_blob("kernel-default", "6.12.8", "1.1"),
        ],
    )
    kver = "6.12.8-1-default"
    put(root, f"usr/lib/modules/{kver}/vmlinuz", b"MZ")
    put(root, f"boot/config-{kver}", b"CONFIG_EFI_STUB=y\n")
    put(root, "usr/share/grub2/x86_64-efi/linux.mod")
    put(root, "usr/bin/dracut", b"#!/bin/bash", 0o755)
    assert systemd_version(root) == (256, "/usr/lib/sysimage/rpm/Packages.db")
    assert rpm_package_version(root, "kernel-default") == ("6.12.8", "/usr/lib/sysimage/rpm/Packages.db")
    secure = evidence(root, "secureboot")
    assert all(ok for ok, _ in secure.values()), secure
    assert secure["grub for EFI"] == (True, "/usr/share/grub2/x86_64-efi/linux.mod")
    assert secure["kernel has the EFI stub"] == (True, f"/boot/config-{kver}")
    assert secure["exactly one kernel"] == (True, f"/usr/lib/modules/{kver}/vmlinuz")


def test_leap_tree_systemd_from_its_library(tmp_path: Path) -> None:
    root = tmp_path
    put(root, "usr/lib64/systemd/libsystemd-shared-254.so")  # Leap 15.6: systemd 254
    put(root, "usr/bin/systemctl", b"\x7fELF", 0o755)
    assert systemd_version(root) == (254, "/usr/lib64/systemd/libsystemd-shared-254.so")
    assert evidence(root, "trusted")["systemd >= 256"] == (
        False,
        "/usr/lib64/systemd/libsystemd-shared-254.so",
    )


ALPINE_KVER = "6.12.13-0-lts"


def alpine_tree(root: Path, *, stub: bool = True) -> Path:
    """Alpine 3.21: openrc, mkinitfs and linux-lts, whose files are named after the flavour."""
    put(root, "sbin/openrc", b"\x7fELF", 0o755)
    put(root, "sbin/mkinitfs", b"\x7fELF", 0o755)
    put(
        root,
        "lib/apk/db/installed",
        b"P:musl\nV:1.2.5-r8\n\nP:openrc\nV:0.55.1-r2\n\nP:linux-lts\nV:6.12.13-r0\n",
    )
    (root / "lib/modules" / ALPINE_KVER / "kernel").mkdir(parents=True)
    put(root, "boot/vmlinuz-lts", b"MZ")
    put(root, "boot/config-lts", b"CONFIG_EFI_STUB=y\n" if stub else b"# CONFIG_EFI_STUB is not set\n")
    put(root, "boot/System.map-lts")
    put(root, "usr/lib/grub/x86_64-efi/linux.mod")
    put(root, "usr/lib/grub/i386-pc/linux.mod")
    return root


def test_alpine_openrc_tree_boots_secure_with_every_evidence(tmp_path: Path) -> None:
    root = alpine_tree(tmp_path)
    secure = evidence(root, "secureboot")
    assert secure == {
        "systemd or openrc in charge": (True, "/sbin/openrc"),
        "grub for EFI": (True, "/usr/lib/grub/x86_64-efi/linux.mod"),
        "exactly one kernel": (True, "/boot/vmlinuz-lts"),
        "kernel has the EFI stub": (True, "/boot/config-lts"),
        "an initramfs tool": (True, "/sbin/mkinitfs"),
    }
    report = check_rootfs(root, "auto")
    assert report.mode == "secureboot" and report.facts["init"] == "openrc"
    assert report.facts["kernels"] == [ALPINE_KVER]
    trusted = evidence(root, "trusted")
    assert trusted["systemd >= 256"] == (False, None)


def test_alpine_kernel_without_the_efi_stub(tmp_path: Path) -> None:
    secure = evidence(alpine_tree(tmp_path, stub=False), "secureboot")
    assert secure["kernel has the EFI stub"] == (False, "/boot/config-lts")
    assert [name for name, (ok, _) in secure.items() if not ok] == ["kernel has the EFI stub"]


def test_header_blob_parsing() -> None:
    blob = header_blob("systemd", "257.9", "1~deb13u1", epoch=1)
    assert header_strings(blob) == {NAME: "systemd", VERSION: "257.9", RELEASE: "1~deb13u1"}
    with pytest.raises(BadHeader, match="preamble"):
        header_strings(blob[:5])
    with pytest.raises(BadHeader, match="header says"):
        header_strings(blob[:-3])
    hostile = bytearray(blob)
    hostile[8 + 16 + 8 : 8 + 16 + 12] = (10**6).to_bytes(4, "big")  # NAME's offset, far outside
    with pytest.raises(BadHeader, match="outside"):
        header_strings(bytes(hostile))
    with pytest.raises(BadHeader, match="implausible"):
        header_strings((1 << 20).to_bytes(4, "big") + bytes(12))


def test_damaged_or_hostile_databases_are_no_evidence_not_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    put(bad, "var/lib/rpm/rpmdb.sqlite", b"SQLite format 3\0" + bytes(200))
    assert rpm_package_version(bad, "systemd") == (None, None)
    ndb = tmp_path / "ndb"
    path = write_ndb_rpmdb(ndb / "usr/lib/sysimage/rpm/Packages.db", [header_blob("systemd", "256")])
    path.write_bytes(path.read_bytes()[:-20])  # the blob's tail is cut off
    assert rpm_package_version(ndb, "systemd") == (None, None)
    escape = tmp_path / "escape"
    outside = write_sqlite_rpmdb(tmp_path / "host/rpmdb.sqlite", [header_blob("systemd", "300")])
    (escape / "var/lib").mkdir(parents=True)
    (escape / "var/lib/rpm").symlink_to(outside.parent)  # absolute: resolved inside the rootfs
    assert rpm_package_version(escape, "systemd") == (None, None)
