"""Conversion steps that need no package manager, on a small fake rootfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kairos_build.config.buildconfig import config_of
from kairos_build.convert.framework import (
    empty_build_records,
    find_kernel,
    find_kernel_version,
    framework_units,
    layer_overlays,
    link_kernel,
    read_os_release,
    reset_identity,
    write_kairos_release,
)
from kairos_build.core.errors import InputError


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for folder in ("etc/ssh", "boot", "lib/modules/6.1.0-test", "var/lib/dbus", "usr/lib"):
        (root / folder).mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=debian\nVERSION_ID="13"\nPRETTY_NAME="Debian 13"\n')
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    for key in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"):
        (root / "etc/ssh" / key).write_text("secret")
    (root / "etc/ssh/sshd_config").write_text("Port 22\n")
    (root / "etc/hostname").write_text("build-host\n")
    (root / "boot/vmlinuz-6.1.0-test").write_bytes(b"MZ")
    return root


def read_release(root: Path) -> dict[str, str]:
    lines = (root / "etc/kairos-release").read_text().splitlines()
    return {k: v.strip('"') for k, v in (line.split("=", 1) for line in lines)}


def test_kairos_release_has_every_key_with_values_from_the_build(fake_root: Path, tmp_path: Path) -> None:
    config = config_of({"flavor": "debian", "version": "2.1.0", "cache-dir": tmp_path})
    write_kairos_release(fake_root, config)
    release = read_release(fake_root)
    assert release == {
        "KAIROS_ID": "kairos",
        "KAIROS_ID_LIKE": "kairos-core-debian-13",
        "KAIROS_NAME": "kairos-core-debian-13",
        "KAIROS_VERSION": "v2.1.0",
        "KAIROS_RELEASE": "v2.1.0",
        "KAIROS_ARCH": "amd64",
        "KAIROS_TARGETARCH": "amd64",
        "KAIROS_FLAVOR": "debian",
        "KAIROS_FLAVOR_RELEASE": "13",
        "KAIROS_FAMILY": "debian",
        "KAIROS_MODEL": "generic",
        "KAIROS_VARIANT": "core",
        "KAIROS_BUG_REPORT_URL": "https://github.com/kairos-io/kairos/issues",
        "KAIROS_HOME_URL": "https://github.com/kairos-io/kairos",
        "KAIROS_FIPS": "false",
        "KAIROS_TRUSTED_BOOT": "false",
    }


def test_flavor_release_comes_from_the_base_os_release(fake_root: Path, tmp_path: Path) -> None:
    (fake_root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    write_kairos_release(fake_root, config_of({"flavor": "debian", "cache-dir": tmp_path}))
    assert read_release(fake_root)["KAIROS_FLAVOR_RELEASE"] == "12"


def test_kairos_release_is_written_inside_the_root_even_through_a_hostile_link(
    fake_root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (fake_root / "etc/kairos-release").symlink_to(outside / "pwned")
    write_kairos_release(fake_root, config_of({"flavor": "debian", "cache-dir": tmp_path}))
    assert not (outside / "pwned").exists()
    written = fake_root / "etc/kairos-release"
    assert written.is_file() and not written.is_symlink()


def test_reset_identity_removes_machine_id_and_host_keys_only(fake_root: Path) -> None:
    reset_identity(fake_root)
    assert not (fake_root / "etc/machine-id").exists()
    assert not os.path.lexists(fake_root / "var/lib/dbus/machine-id")
    assert not (fake_root / "etc/hostname").exists()
    assert sorted(p.name for p in (fake_root / "etc/ssh").iterdir()) == ["sshd_config"]


def test_one_kernel_is_found_and_linked(fake_root: Path) -> None:
    assert find_kernel_version(fake_root) == "6.1.0-test"
    link_kernel(fake_root, "6.1.0-test", "initrd.img-6.1.0-test")
    assert os.readlink(fake_root / "boot/vmlinuz") == "vmlinuz-6.1.0-test"
    assert os.readlink(fake_root / "boot/initrd") == "initrd.img-6.1.0-test"


def test_no_kernel_or_two_kernels_is_an_error(fake_root: Path) -> None:
    (fake_root / "boot/vmlinuz-6.1.0-test").unlink()
    with pytest.raises(InputError, match="no kernel"):
        find_kernel_version(fake_root)
    for version in ("6.1.0-test", "6.2.0-test"):
        (fake_root / "lib/modules" / version).mkdir(exist_ok=True)
        (fake_root / "boot" / f"vmlinuz-{version}").write_bytes(b"MZ")
    with pytest.raises(InputError, match="2 kernels"):
        find_kernel_version(fake_root)


def test_overlays_are_layered_with_modes_and_links(fake_root: Path) -> None:
    layer_overlays(fake_root, "debian")
    report = fake_root / "usr/lib/kairos/boot-report"
    assert report.is_file() and os.access(report, os.X_OK)
    assert (fake_root / "usr/lib/systemd/system/kairos-boot-report.service").is_file()
    assert "kairos-boot-report.service" in framework_units("debian")
    assert "dmsquash-live" in (fake_root / "etc/dracut.conf.d/10-kairos.conf").read_text()


def test_os_release_parsing_unquotes(fake_root: Path) -> None:
    assert read_os_release(fake_root)["PRETTY_NAME"] == "Debian 13"


def test_data_folders_hold_no_symlinks() -> None:
    # Wheels cannot carry symlinks: an installed kairos-build would lose them (or fail to build).
    top = Path(__file__).parents[2]
    links = [
        p for name in ("flavors", "overlays", "templates") for p in (top / name).rglob("*") if p.is_symlink()
    ]
    assert links == []


def test_flavor_release_names_the_variant_like_kairos(fake_root: Path, tmp_path: Path) -> None:
    (fake_root / "etc/os-release").write_text('ID="opensuse-leap"\nVERSION_ID="15.6"\n')
    write_kairos_release(fake_root, config_of({"flavor": "opensuse", "cache-dir": tmp_path}))
    release = read_release(fake_root)
    assert release["KAIROS_FLAVOR_RELEASE"] == "leap-15.6"
    assert release["KAIROS_NAME"] == "kairos-core-opensuse-leap-15.6"
    (fake_root / "etc/os-release").write_text("ID=alpine\nVERSION_ID=3.21.3\n")
    write_kairos_release(fake_root, config_of({"flavor": "alpine", "cache-dir": tmp_path}))
    assert read_release(fake_root)["KAIROS_FLAVOR_RELEASE"] == "3.21.3"


def test_kernel_found_where_the_flavor_says(fake_root: Path) -> None:
    (fake_root / "boot/vmlinuz-6.1.0-test").unlink()
    (fake_root / "lib/modules/6.1.0-test/vmlinuz").write_bytes(b"MZ")
    images = ("boot/vmlinuz-{kver}", "lib/modules/{kver}/vmlinuz")
    assert find_kernel(fake_root, images) == ("6.1.0-test", "lib/modules/6.1.0-test/vmlinuz")
    link_kernel(fake_root, "6.1.0-test", "boot/initramfs-6.1.0-test.img", "lib/modules/6.1.0-test/vmlinuz")
    assert os.readlink(fake_root / "boot/vmlinuz") == "../lib/modules/6.1.0-test/vmlinuz"
    assert os.readlink(fake_root / "boot/initrd") == "initramfs-6.1.0-test.img"
    with pytest.raises(InputError, match="quirks.kernel_image"):
        find_kernel(fake_root, ("boot/vmlinuz-lts",))


def test_build_records_are_emptied_and_host_caches_dropped(fake_root: Path, tmp_path: Path) -> None:
    logs = fake_root / "var/log"
    (logs / "apt").mkdir(parents=True)
    (fake_root / "var/cache/ldconfig").mkdir(parents=True)
    (fake_root / "var/cache/ldconfig/aux-cache").write_bytes(b"inode numbers")
    old = logs / "base-image.log"
    old.write_text("from the base image\n")
    os.utime(old, (1000, 1000))
    since = 2000.0
    (logs / "dpkg.log").write_text("2026-11-22 19:00:01 install curl\n")
    (logs / "apt/history.log").write_text("Start-Date: 2026-11-22\n")
    os.chmod(logs / "dpkg.log", 0o640)
    outside = tmp_path / "outside.log"
    outside.write_text("not the image's\n")
    (logs / "link.log").symlink_to(outside)
    twin = fake_root / "etc/twin"
    twin.write_text("shared inode\n")
    os.link(twin, logs / "twin.log")

    empty_build_records(fake_root, since)

    assert (logs / "dpkg.log").read_text() == "" and (logs / "apt/history.log").read_text() == ""
    assert (logs / "dpkg.log").stat().st_mode & 0o777 == 0o640  # kept, only emptied
    assert old.read_text() == "from the base image\n"  # older than the conversion
    assert outside.read_text() == "not the image's\n" and twin.read_text() == "shared inode\n"
    assert not (fake_root / "var/cache/ldconfig/aux-cache").exists()
