"""The signed chain rules of `check --mode secureboot` on fake trees holding real signed and
unsigned EFI binaries: what passes, which package a failure names, and that builds go on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kairos_build.check.rules import Rule, check_rootfs, require_mode
from tests.conftest import run_cli
from tests.unit.test_checks import make_tree
from tests.unit.test_pe import TEST_SIGNER, grub_image, make_key, sign

DEBIAN_KVER = "6.1.0-test-amd64"
DEBIAN_SHIM = "usr/lib/shim/shimx64.efi.signed"
DEBIAN_GRUB = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
CHAIN = ("signed shim", "signed grub", "kernel signed")


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An unsigned grub EFI image and the same signed with a throw-away key."""
    folder = tmp_path_factory.mktemp("efi")
    unsigned = grub_image(folder / "grub.efi", "/EFI/test")
    return {"unsigned": unsigned, "signed": sign(unsigned, folder / "grub.signed.efi", *make_key(folder))}


def put_binary(root: Path, rel: str, source: Path) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    shutil.copyfile(source, path)


def os_release(root: Path, os_id: str) -> None:
    (root / "usr/lib").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/os-release").write_text(f'NAME="test"\nID={os_id}\n')
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")


def debian_tree(
    root: Path,
    binaries: dict[str, Path],
    *,
    shim: str | None = "signed",
    grub: str | None = "signed",
    kernel: str = "signed",
) -> Path:
    """make_tree's Debian-like tree, with the chain where Debian's packages put it."""
    make_tree(root, kernels=(DEBIAN_KVER,))
    os_release(root, "debian")
    if shim:
        put_binary(root, DEBIAN_SHIM, binaries[shim])
    if grub:
        put_binary(root, DEBIAN_GRUB, binaries[grub])
    if kernel in binaries:
        put_binary(root, f"boot/vmlinuz-{DEBIAN_KVER}", binaries[kernel])
    return root


def chain(root: Path) -> dict[str, Rule]:
    return {r.name: r for r in check_rootfs(root, "secureboot").rules if r.name in CHAIN}


def test_debian_tree_with_the_signed_chain_passes_naming_each_file_and_signer(
    tmp_path: Path, binaries: dict[str, Path]
) -> None:
    root = debian_tree(tmp_path, binaries)
    report = check_rootfs(root, "secureboot")
    assert report.ok and report.buildable, report.rules
    rules = chain(root)
    assert rules["signed shim"].evidence == f"/{DEBIAN_SHIM}"
    assert rules["signed grub"].evidence == f"/{DEBIAN_GRUB}"
    assert rules["kernel signed"].evidence == f"/boot/vmlinuz-{DEBIAN_KVER}"
    assert all(r.detail == f"signed by {TEST_SIGNER}" and not r.blocking for r in rules.values())
    assert check_rootfs(root, "auto").mode == "secureboot"  # no systemd-boot: trusted fails


@pytest.mark.parametrize(
    ("piece", "missing", "rule", "detail", "evidence"),
    [
        (
            "shim",
            None,
            "signed shim",
            "not found (looked for /usr/lib/shim/shimx64.efi.signed); install shim-signed",
            None,
        ),
        (
            "shim",
            "unsigned",
            "signed shim",
            "has no Authenticode signature; install shim-signed",
            f"/{DEBIAN_SHIM}",
        ),
        (
            "grub",
            "unsigned",
            "signed grub",
            "has no Authenticode signature; install grub-efi-amd64-signed",
            f"/{DEBIAN_GRUB}",
        ),
        (
            "kernel",
            "unsigned",
            "kernel signed",
            "has no Authenticode signature; install linux-image-amd64",
            f"/boot/vmlinuz-{DEBIAN_KVER}",
        ),
        (
            "kernel",
            "none",
            "kernel signed",
            "not an EFI binary; install linux-image-amd64",
            f"/boot/vmlinuz-{DEBIAN_KVER}",
        ),  # make_tree's two-byte "MZ" kernel
    ],
)
def test_a_missing_or_unsigned_piece_fails_naming_its_package_but_not_the_build(
    tmp_path: Path,
    binaries: dict[str, Path],
    piece: str,
    missing: str | None,
    rule: str,
    detail: str,
    evidence: str | None,
) -> None:
    root = debian_tree(tmp_path, binaries, **{piece: missing})  # type: ignore[arg-type]
    rules = chain(root)
    assert [name for name, r in rules.items() if not r.ok] == [rule]
    assert (rules[rule].detail, rules[rule].evidence) == (detail, evidence)
    report = check_rootfs(root, "secureboot")
    assert not report.ok and report.buildable
    assert require_mode(root, "secureboot", "the iso artifact") == report  # no CheckFailedError


def test_a_tree_without_any_chain_still_builds(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    assert not check_rootfs(root, "secureboot").ok
    require_mode(root, "secureboot", "the raw artifact")
    assert all(not r.ok and not r.blocking for r in chain(root).values())
    # without os-release no flavor is known: the generic words, every flavor's paths
    assert chain(root)["signed shim"].detail.endswith("install the distro's signed shim package")
    assert chain(root)["kernel signed"].detail.endswith("install the distro's signed kernel package")


@pytest.mark.parametrize(
    ("os_id", "shim", "grub", "kernel", "packages"),
    [
        (
            "fedora",
            "boot/efi/EFI/fedora/shimx64.efi",
            "boot/efi/EFI/fedora/grubx64.efi",
            "usr/lib/modules/{kver}/vmlinuz",
            ("shim-x64", "grub2-efi-x64", "kernel-core"),
        ),
        (
            "rocky",
            "boot/efi/EFI/rocky/shimx64.efi",
            "boot/efi/EFI/rocky/grubx64.efi",
            "usr/lib/modules/{kver}/vmlinuz",
            ("shim-x64", "grub2-efi-x64", "kernel-core"),
        ),
        (
            "opensuse-tumbleweed",
            "usr/share/efi/x86_64/shim.efi",
            "usr/share/efi/x86_64/grub.efi",
            "usr/lib/modules/{kver}/vmlinuz",
            ("shim", "grub2-x86_64-efi", "kernel-default"),
        ),
        (
            "opensuse-leap",
            "usr/share/efi/x86_64/shim.efi",
            "usr/share/efi/x86_64/grub.efi",
            "boot/vmlinuz-{kver}",
            ("shim", "grub2-x86_64-efi", "kernel-default"),
        ),
    ],
)
def test_other_distros_paths_and_packages_via_os_release(
    tmp_path: Path,
    binaries: dict[str, Path],
    os_id: str,
    shim: str,
    grub: str,
    kernel: str,
    packages: tuple[str, str, str],
) -> None:
    kver = "6.12.8-1-test"
    root = make_tree(tmp_path, kernels=())
    (root / "usr/lib/modules" / kver).mkdir(parents=True)
    os_release(root, os_id)
    put_binary(root, shim, binaries["signed"])
    put_binary(root, grub, binaries["signed"])
    put_binary(root, kernel.format(kver=kver), binaries["signed"])
    rules = chain(root)
    assert {name: (r.ok, r.evidence) for name, r in rules.items()} == {
        "signed shim": (True, f"/{shim}"),
        "signed grub": (True, f"/{grub}"),
        "kernel signed": (True, "/" + kernel.format(kver=kver)),
    }
    # each piece in turn unsigned: the distro's own package is named
    for rel, name, package in zip((shim, grub, kernel.format(kver=kver)), CHAIN, packages, strict=True):
        put_binary(root, rel, binaries["unsigned"])
        assert chain(root)[name].detail == f"has no Authenticode signature; install {package}"
        put_binary(root, rel, binaries["signed"])


def test_a_signed_candidate_wins_over_an_unsigned_one_and_links_stay_inside(
    tmp_path: Path, binaries: dict[str, Path]
) -> None:
    root = debian_tree(tmp_path / "root", binaries, shim=None)
    # Ubuntu's .latest comes first in the union but is unsigned; Debian's path is signed
    put_binary(root, "usr/lib/shim/shimx64.efi.signed.latest", binaries["unsigned"])
    put_binary(root, DEBIAN_SHIM, binaries["signed"])
    assert chain(root)["signed shim"].evidence == f"/{DEBIAN_SHIM}"
    # an absolute link to a signed host file is resolved inside the rootfs: not found there
    host = tmp_path / "host-grub.efi"
    shutil.copyfile(binaries["signed"], host)
    (root / DEBIAN_GRUB).unlink()
    (root / DEBIAN_GRUB).symlink_to(host)
    assert chain(root)["signed grub"].detail.startswith("not found")
    # a relative link inside the tree is followed
    (root / DEBIAN_GRUB).unlink()
    put_binary(root, "usr/lib/grub/real.efi", binaries["signed"])
    (root / DEBIAN_GRUB).symlink_to("../real.efi")
    assert chain(root)["signed grub"].ok


def test_check_verb_passes_on_the_signed_chain_and_reports_it_in_json(
    tmp_path: Path, binaries: dict[str, Path]
) -> None:
    root = debian_tree(tmp_path / "tree", binaries)
    cache = str(tmp_path / "cache")
    result = run_cli("check", str(root), "--mode", "secureboot", "--cache-dir", cache)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "secureboot passes" in result.stdout
    assert f"pass  signed grub: signed by {TEST_SIGNER} (/{DEBIAN_GRUB})" in result.stdout
    (root / DEBIAN_SHIM).unlink()
    result = run_cli("check", str(root), "--mode", "secureboot", "--json", "--cache-dir", cache)
    assert result.returncode == 3
    rules = {r["name"]: r for r in json.loads(result.stdout)["rules"]}
    assert rules["signed shim"] == {
        "name": "signed shim",
        "ok": False,
        "blocking": False,
        "evidence": None,
        "detail": "not found (looked for /usr/lib/shim/shimx64.efi.signed); install shim-signed",
    }
