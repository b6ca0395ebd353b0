"""Requirement checks on small fake trees: each rule, and the evidence it names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kairos_build.check.rules import check_rootfs, is_efi_stub_image, systemd_version
from kairos_build.core.errors import InputError
from tests.conftest import run_cli

KVER = "6.12.0-test"


def efi_stub_header() -> bytes:
    header = bytearray(4096)
    header[:2] = b"MZ"
    header[0x3C:0x40] = (0x80).to_bytes(4, "little")
    header[0x80:0x84] = b"PE\0\0"
    header[0x202:0x206] = b"HdrS"
    return bytes(header)


def make_tree(
    root: Path,
    *,
    systemd: int | None = 257,
    sd_boot: bool = False,
    grub: bool = True,
    openrc: bool = False,
    stub: bool | None = True,
    kernels: tuple[str, ...] = (KVER,),
    dracut: bool = True,
) -> Path:
    def put(rel: str, data: bytes = b"", mode: int = 0o644) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)

    if systemd is not None:
        put(f"usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-{systemd}.so")
        put("usr/bin/systemctl", b"\x7fELF", 0o755)
    if sd_boot:
        put("usr/lib/systemd/boot/efi/systemd-bootx64.efi", b"MZ....#### LoaderInfo: systemd-boot 257.9 ####")
    if grub:
        put("usr/lib/grub/x86_64-efi/linux.mod")
    if openrc:
        put("sbin/openrc", b"\x7fELF", 0o755)
    for version in kernels:
        (root / "lib/modules" / version).mkdir(parents=True, exist_ok=True)
        put(f"boot/vmlinuz-{version}", efi_stub_header() if stub is None else b"MZ")
        if stub is not None:
            put(
                f"boot/config-{version}",
                b"CONFIG_EFI_STUB=y\n" if stub else b"# CONFIG_EFI_STUB is not set\n",
            )
    if dracut:
        put("usr/bin/dracut", b"#!/bin/sh", 0o755)
    return root


def failed(root: Path, mode: str) -> list[str]:
    """The failed blocking rules (these trees have no signed chain: test_checks_secureboot.py)."""
    return [r.name for r in check_rootfs(root, mode).rules if not r.ok and r.blocking]


def test_trixie_like_tree_passes_trusted_with_systemd_boot(tmp_path: Path) -> None:
    root = make_tree(tmp_path, systemd=257, sd_boot=True)
    report = check_rootfs(root, "trusted")
    assert report.ok, report.rules
    evidence = {r.name: r.evidence for r in report.rules}
    assert evidence["systemd >= 256"] == "/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-257.so"
    assert evidence["systemd-boot EFI binary"] == "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    assert check_rootfs(root, "auto").mode == "trusted"


def test_bookworm_like_tree_fails_trusted_on_systemd_252_but_boots_secure(tmp_path: Path) -> None:
    root = make_tree(tmp_path, systemd=252, sd_boot=True)
    assert failed(root, "trusted") == ["systemd >= 256"]
    rule = next(r for r in check_rootfs(root, "trusted").rules if r.name == "systemd >= 256")
    assert rule.detail == "systemd 252 < 256"
    assert check_rootfs(root, "secureboot").buildable
    assert check_rootfs(root, "auto").mode == "secureboot"


def test_no_systemd_boot_fails_trusted(tmp_path: Path) -> None:
    assert failed(make_tree(tmp_path), "trusted") == ["systemd-boot EFI binary"]


def test_openrc_with_grub_passes_secureboot_only(tmp_path: Path) -> None:
    root = make_tree(tmp_path, systemd=None, openrc=True)
    assert check_rootfs(root, "secureboot").buildable
    assert "systemd >= 256" in failed(root, "trusted")


def test_no_grub_no_init_fail_secureboot(tmp_path: Path) -> None:
    root = make_tree(tmp_path, systemd=None, grub=False)
    assert failed(root, "secureboot") == ["systemd or openrc in charge", "grub for EFI"]


def test_kernel_without_efi_stub_fails(tmp_path: Path) -> None:
    assert failed(make_tree(tmp_path, stub=False), "secureboot") == ["kernel has the EFI stub"]


def test_efi_stub_proven_from_the_pe_header_when_no_config(tmp_path: Path) -> None:
    assert check_rootfs(make_tree(tmp_path, stub=None), "secureboot").buildable
    assert is_efi_stub_image(efi_stub_header())
    assert not is_efi_stub_image(b"MZ" + bytes(4094))  # a DOS stub with no PE header
    assert not is_efi_stub_image(b"\x7fELF" + bytes(4092))


@pytest.mark.parametrize("kernels", [(), ("6.1.0-a", "6.2.0-b")])
def test_exactly_one_kernel(tmp_path: Path, kernels: tuple[str, ...]) -> None:
    assert "exactly one kernel" in failed(make_tree(tmp_path, kernels=kernels), "secureboot")


def test_no_initramfs_tool(tmp_path: Path) -> None:
    assert failed(make_tree(tmp_path, dracut=False), "secureboot") == ["an initramfs tool"]


def test_systemd_version_from_package_databases(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(
        "Package: systemd-sysv\nStatus: install ok installed\nVersion: 999\n\n"
        "Package: systemd\nStatus: install ok installed\nVersion: 1:257.9-1~deb13u1\n"
    )
    assert systemd_version(tmp_path) == (257, "/var/lib/dpkg/status")
    apk = tmp_path / "apk"
    (apk / "lib/apk/db").mkdir(parents=True)
    (apk / "lib/apk/db/installed").write_text("P:busybox\nV:1.36\n\nP:systemd\nV:256.4-r0\n")
    assert systemd_version(apk) == (256, "/lib/apk/db/installed")


def test_hostile_links_and_odd_trees_stay_inside_and_do_not_crash(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root")
    (tmp_path / "outside/usr/lib/systemd/boot/efi").mkdir(parents=True)
    (tmp_path / "outside/usr/lib/systemd/boot/efi/systemd-bootx64.efi").write_bytes(b"x")
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/systemd/boot").symlink_to(tmp_path / "outside/usr/lib/systemd/boot")
    assert "systemd-boot EFI binary" in failed(root, "trusted")  # the host's file is not evidence
    (root / "sbin").write_text("a file where a directory should be")
    (root / "lib/modules/loop").symlink_to("loop")
    check_rootfs(root, "auto")


def test_unknown_mode() -> None:
    with pytest.raises(InputError):
        check_rootfs(Path("/nonexistent"), "fast")


def test_check_verb_exit_codes_and_json(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", systemd=252)
    result = run_cli(
        "check", str(root), "--mode", "trusted", "--json", "--cache-dir", str(tmp_path / "cache")
    )
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["mode"] == "trusted" and report["ok"] is False and report["facts"]["systemd"] == 252
    assert any(r["name"] == "systemd >= 256" and not r["ok"] for r in report["rules"])
    # Bootable with Secure Boot off, but no signed chain: check fails on the non-blocking rules.
    secure = run_cli(
        "check", str(root), "--mode", "secureboot", "--json", "--cache-dir", str(tmp_path / "cache")
    )
    assert secure.returncode == 3, secure.stderr
    rules = {r["name"]: r for r in json.loads(secure.stdout)["rules"]}
    assert rules["grub for EFI"]["ok"] and rules["grub for EFI"]["blocking"]
    assert not rules["signed shim"]["ok"] and rules["signed shim"]["blocking"] is False
    text = run_cli("check", str(root), "--mode", "secureboot", "--cache-dir", str(tmp_path / "cache"))
    assert "secureboot FAILS" in text.stdout
    assert "FAIL  signed shim: not found" in text.stdout and "[builds go on without it]" in text.stdout
