"""What goes on an ESP (kairos_build/disk/efi.py), on fake trees holding real grub images:
the image's signed chain under the names each binary looks for, the config wherever the
grub's built-in prefix points, and the unsigned fallbacks, each said in the log."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from kairos_build.core.flavors import load_flavor
from kairos_build.core.pe import grub_prefix
from kairos_build.disk.efi import config_folders, esp_files
from kairos_build.disk.grub import GRUB_LIB

DEBIAN = load_flavor("debian").secure_boot
SUSE = load_flavor("opensuse").secure_boot


def grub_image(out: Path, prefix: str) -> Path:
    """A real grub EFI image (unsigned: the layout does not depend on the signature)."""
    subprocess.run(
        ["grub-mkimage", "-O", "x86_64-efi", "-p", prefix, "-o", str(out), "normal"],
        check=True,
        capture_output=True,
    )
    return out


def put(root: Path, rel: str, source: Path) -> None:
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


@pytest.fixture
def debian_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    signed = "usr/lib/grub/x86_64-efi-signed"
    put(root, f"{signed}/grubx64.efi.signed", grub_image(tmp_path / "d.efi", "/EFI/debian"))
    put(root, f"{signed}/gcdx64.efi.signed", grub_image(tmp_path / "c.efi", "/boot/grub"))
    (root / "usr/lib/shim").mkdir(parents=True)
    (root / "usr/lib/shim/shimx64.efi.signed").write_bytes(b"MZ shim")
    (root / "usr/lib/shim/mmx64.efi.signed").write_bytes(b"MZ mok")
    (root / "usr/lib/shim/fbx64.efi.signed").write_bytes(b"MZ fallback")
    return root


def test_disk_esp_has_shim_as_the_removable_loader_and_the_config_at_the_grub_prefix(
    debian_tree: Path, tmp_path: Path
) -> None:
    files = esp_files(debian_tree, DEBIAN, "COS_STATE", tmp_path, cd=False)
    assert files["EFI/BOOT/BOOTX64.EFI"].read_bytes() == b"MZ shim"
    assert files["EFI/BOOT/mmx64.efi"].read_bytes() == b"MZ mok"
    assert grub_prefix(files["EFI/BOOT/grubx64.efi"]) == "/EFI/debian"  # grubx64, not gcdx64
    # Its own folder and its prefix: both lead to the menu on COS_STATE.
    assert set(files) == {
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/BOOT/grubx64.efi",
        "EFI/BOOT/mmx64.efi",
        "EFI/BOOT/grub.cfg",
        "EFI/debian/grub.cfg",
    }
    stub = files["EFI/debian/grub.cfg"].read_text()
    assert "search --no-floppy --label --set=root COS_STATE" in stub
    assert "configfile ($root)/boot/grub/grub.cfg" in stub
    # fallback (fbx64) would create firmware boot entries when shim starts as BOOTX64.EFI.
    assert not any("fb" in name.lower() for name in files)


def test_live_esp_uses_the_cd_grub_and_its_prefix(debian_tree: Path, tmp_path: Path) -> None:
    files = esp_files(debian_tree, DEBIAN, "COS_LIVE", tmp_path, cd=True)
    assert grub_prefix(files["EFI/BOOT/grubx64.efi"]) == "/boot/grub"
    assert "boot/grub/grub.cfg" in files and "EFI/debian/grub.cfg" not in files
    assert "--set=root COS_LIVE" in files["boot/grub/grub.cfg"].read_text()


def test_suse_shim_starts_grub_efi_and_mokmanager_by_its_own_names(tmp_path: Path) -> None:
    assert SUSE is not None
    root = tmp_path / "root"
    put(root, "usr/share/efi/x86_64/grub.efi", grub_image(tmp_path / "g.efi", "/EFI/opensuse"))
    (root / "usr/share/efi/x86_64/shim.efi").write_bytes(b"MZ shim")
    (root / "usr/share/efi/x86_64/MokManager.efi").write_bytes(b"MZ mok")
    files = esp_files(root, SUSE, "COS_STATE", tmp_path, cd=True)  # no CD build: grub.efi
    assert {"EFI/BOOT/grub.efi", "EFI/BOOT/MokManager.efi", "EFI/opensuse/grub.cfg"} <= set(files)


@pytest.mark.parametrize(
    ("prefix", "folders"),
    [
        ("/EFI/debian", ["EFI/BOOT", "EFI/debian"]),
        ("/EFI/BOOT", ["EFI/BOOT"]),
        ("/boot/grub", ["EFI/BOOT", "boot/grub"]),
        ("(memdisk)/boot/grub", ["EFI/BOOT"]),
        ("/../../etc", ["EFI/BOOT"]),
        ("", ["EFI/BOOT"]),
        (None, ["EFI/BOOT"]),
    ],
)
def test_config_folders_follow_a_plain_prefix_only(prefix: str | None, folders: list[str]) -> None:
    assert config_folders(prefix) == folders


def test_without_a_shim_the_images_own_grub_modules_boot_it_unsigned(
    debian_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (debian_tree / "usr/lib/shim/shimx64.efi.signed").unlink()
    shutil.copytree(GRUB_LIB / "x86_64-efi", debian_tree / "usr/lib/grub/x86_64-efi")
    (debian_tree / "usr/lib/grub/x86_64-efi/kairos-marker").write_text("the image's")
    with caplog.at_level(logging.INFO, logger="kairos-build"):
        files = esp_files(debian_tree, DEBIAN, "COS_STATE", tmp_path, cd=False)
    assert list(files) == ["EFI/BOOT/BOOTX64.EFI"]
    assert grub_prefix(files["EFI/BOOT/BOOTX64.EFI"]) == "/boot/grub"
    said = [r.getMessage() for r in caplog.records]
    assert any("no signed shim and grub" in line and "not under Secure Boot" in line for line in said)
    assert not any("build host's grub" in line for line in said)  # the image's modules


def test_without_any_grub_the_build_hosts_is_the_fallback_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with caplog.at_level(logging.INFO, logger="kairos-build"):
        files = esp_files(root, None, "COS_STATE", tmp_path, cd=False)
    assert grub_prefix(files["EFI/BOOT/BOOTX64.EFI"]) == "/boot/grub"
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "its flavor names none" in said and "the build host's grub for UEFI" in said


def test_a_shim_link_leaving_the_rootfs_is_not_followed_out(debian_tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "host-shim.efi"
    outside.write_bytes(b"MZ host")
    shim = debian_tree / "usr/lib/shim/shimx64.efi.signed"
    shim.unlink()
    shim.symlink_to(outside)  # absolute: resolved inside the rootfs, where it does not exist
    shutil.copytree(GRUB_LIB / "x86_64-efi", debian_tree / "usr/lib/grub/x86_64-efi")
    files = esp_files(debian_tree, DEBIAN, "COS_STATE", tmp_path, cd=False)
    assert all(path.read_bytes() != b"MZ host" for path in files.values())


def test_an_image_grub_folder_with_a_symlink_is_not_read_on_the_host(tmp_path: Path) -> None:
    """grub-mkimage reads the folder's files on the host: a module linked to a host file would
    put that file into the artifact, so such a folder is not used."""
    from kairos_build.disk.grub import image_grub_dir

    root = tmp_path / "root"
    shutil.copytree(GRUB_LIB / "i386-pc", root / "usr/lib/grub/i386-pc")
    assert image_grub_dir(root, "i386-pc") == root / "usr/lib/grub/i386-pc"
    (root / "usr/lib/grub/i386-pc/echo.mod").unlink()
    (root / "usr/lib/grub/i386-pc/echo.mod").symlink_to("/etc/hostname")
    assert image_grub_dir(root, "i386-pc") is None
