"""Requirement checks on the real trixie trees, and a build that stops on a failed check."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos_build.check.rules import check_rootfs
from kairos_build.core.cache import Cache, cache_key
from kairos_build.core.flavors import load_flavor
from kairos_build.core.pe import authenticode_signers, grub_embedded_config, grub_prefix
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


# probe_tree: the converted trixie the session's disks are built from (`convert -o dir:`).
def test_converted_trixie_boots_secure_and_trusted(probe_tree: Path) -> None:
    """The flavor's trixie installs systemd-boot and the stub (its `trusted` role), so one
    converted trixie passes both; bookworm fails Trusted Boot (test_boot_bookworm.py)."""
    root = probe_tree
    secure = check_rootfs(root, "secureboot")
    assert secure.ok, secure.rules
    trusted = check_rootfs(root, "trusted")
    assert trusted.ok, [r for r in trusted.rules if not r.ok]
    assert next(r for r in trusted.rules if r.name == "systemd-boot EFI binary").evidence
    systemd = next(r for r in trusted.rules if r.name == "systemd >= 256")
    assert systemd.ok and int(systemd.detail.split()[-1]) >= 256  # trixie ships 257
    stub = next(r for r in secure.rules if r.name == "kernel has the EFI stub")
    assert stub.evidence and stub.evidence.startswith("/boot/config-")


def test_converted_trixie_has_debians_signed_chain(probe_tree: Path) -> None:
    root = probe_tree
    chain = {r.name: r for r in check_rootfs(root, "secureboot").rules if not r.blocking}
    assert {name: r.evidence for name, r in chain.items()} == {
        "signed shim": "/usr/lib/shim/shimx64.efi.signed",
        "signed grub": "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
        "kernel signed": next(
            r.evidence for r in check_rootfs(root, "secureboot").rules if r.name == "exactly one kernel"
        ),
    }
    assert "Microsoft Corporation UEFI CA 2011" in chain["signed shim"].detail
    assert chain["signed grub"].detail == "signed by Debian Secure Boot Signer 2022 - grub2"
    assert chain["kernel signed"].detail.startswith("signed by Debian Secure Boot Signer")
    # What the exporters rely on: where each signed grub looks for its config.
    signed = root / "usr/lib/grub/x86_64-efi-signed"
    assert grub_prefix(signed / "grubx64.efi.signed") == "/EFI/debian"
    assert grub_embedded_config(signed / "grubx64.efi.signed") is None  # trixie: reads $prefix/grub.cfg
    assert grub_prefix(signed / "gcdx64.efi.signed") == "/boot/grub"
    assert (grub_embedded_config(signed / "gcdx64.efi.signed") or "").startswith("normal (memdisk)/grub.cfg")
    mok_manager = root / "usr/lib/shim/mmx64.efi.signed"
    assert authenticode_signers(mok_manager) == ["Debian Secure Boot Signer 2022 - shim"]


def test_the_bare_base_has_no_kernel(test_cache: Path, built_iso: tuple[Path, str]) -> None:
    recipe = load_flavor("debian").release("trixie").bootstrap
    base = Cache(test_cache).path("rootfs", cache_key("bootstrap", recipe=recipe))
    result = run_cli("check", str(base), "--mode", "secureboot", "--cache-dir", str(test_cache))
    assert result.returncode == 3
    assert "FAIL  exactly one kernel: found 0" in result.stdout


def test_a_build_stops_on_a_failed_check_before_exporting(tmp_path: Path) -> None:
    # Already converted (kairos-release present), so conversion keeps it as it is: no kernel.
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/kairos-release").write_text('KAIROS_ID="kairos"\n')
    (tree / "etc/os-release").write_text("ID=debian\nVERSION_ID=13\n")
    out = tmp_path / "out"
    result = run_cli(
        "iso", "--base", f"dir:{tree}", "--output", str(out), "--cache-dir", str(tmp_path / "cache")
    )
    assert result.returncode == 3, result.stderr
    assert "needs a secureboot capable image" in result.stderr and "exactly one kernel" in result.stderr
    assert "exporting iso" not in result.stderr
    assert not any(out.iterdir())
