from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kairos_build.core.errors import InputError
from kairos_build.core.flavors import flavor_names, load_flavor, parse_flavor


def write_flavor(folder: Path, name: str, **changes: object) -> Path:
    data = yaml.safe_load((Path(__file__).parents[2] / "flavors" / "debian.yaml").read_text())
    data["name"] = name
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_debian_flavor_loads_with_trixie_default_and_bookworm() -> None:
    flavor = load_flavor("debian")
    assert flavor.family == "debian" and flavor.package_manager == "apt"
    assert flavor.init == "systemd" and flavor.bootloader == "grub" and flavor.initramfs == "dracut"
    assert flavor.release(None).name == "trixie"
    assert flavor.release("bookworm").bootstrap is not None
    assert flavor.release("bookworm").bootstrap.suite == "bookworm"  # type: ignore[union-attr]
    packages = flavor.all_packages()
    for role in ("kernel", "init", "initramfs", "bootloader", "filesystem"):
        assert flavor.packages[role], role
    wanted = {"linux-image-amd64", "dracut", "dracut-live", "grub-pc-bin", "grub-efi-amd64-bin"}
    assert wanted <= set(packages)
    assert len(packages) == len(set(packages))
    assert "debian" in flavor_names()


def test_unknown_flavor_lists_the_known_ones() -> None:
    with pytest.raises(InputError) as err:
        load_flavor("nosuchos")
    assert "unknown flavor 'nosuchos'" in str(err.value) and "debian" in str(err.value)


def test_path_like_flavor_name_is_refused() -> None:
    with pytest.raises(InputError):
        load_flavor("../flavors/debian")


def test_unknown_release_names_the_choices() -> None:
    with pytest.raises(InputError) as err:
        load_flavor("debian").release("sid")
    assert "bookworm, trixie" in str(err.value)


def assert_names_file_key_and_fix(tmp_path: Path, changes: dict[str, object], key: str, fix: str) -> None:
    path = write_flavor(tmp_path, "mine", **changes)
    with pytest.raises(InputError) as err:
        parse_flavor(path)
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message and fix in message, message


@pytest.mark.parametrize(
    ("changes", "key", "fix"),
    [
        ({"packge_manager": "apt"}, "packge_manager", "package_manager"),
        ({"init": "upstart"}, "init", "systemd, openrc"),
        ({"family": None}, "family", "add family:"),
        ({"default_release": "sid"}, "default_release", "trixie"),
        ({"packages": {"kernel": "linux-image-amd64"}}, "packages.kernel", "kernel: [linux-image-amd64]"),
        ({"releases": {"trixie": {"image": "x"}}}, "releases.trixie.flavor_release", "add flavor_release"),
        (
            {
                "releases": {
                    "trixie": {
                        "flavor_release": "13",
                        "image": "x",
                        "bootstrap": {"tool": "m", "suite": "t", "varient": "x"},
                    }
                }
            },
            "releases.trixie.bootstrap.varient",
            "variant",
        ),
    ],
)
def test_a_wrong_key_names_file_key_and_fix(
    tmp_path: Path, changes: dict[str, object], key: str, fix: str
) -> None:
    assert_names_file_key_and_fix(tmp_path, changes, key, fix)


def test_name_must_match_file(tmp_path: Path) -> None:
    path = write_flavor(tmp_path, "mine")
    path.rename(tmp_path / "other.yaml")
    with pytest.raises(InputError, match="name it 'other'"):
        parse_flavor(tmp_path / "other.yaml")


def test_not_yaml_mapping(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="must be a YAML mapping"):
        parse_flavor(path)


# What each distro really calls things, and what they need: each flavor file is held to it.
EXPECTED = {
    # name: (family, manager, init, initramfs, default release, default image, live-boot package,
    #        a kernel package, a bootloader package)
    "debian": (
        "debian",
        "apt",
        "systemd",
        "dracut",
        "trixie",
        "docker.io/library/debian:trixie-slim",
        "dracut-live",
        "linux-image-amd64",
        "grub-efi-amd64-bin",
    ),
    "ubuntu": (
        "debian",
        "apt",
        "systemd",
        "dracut",
        "24.04",
        "docker.io/library/ubuntu:24.04",
        "dracut-live",
        "linux-image-generic-hwe-24.04",
        "grub-efi-amd64-bin",
    ),
    "fedora": (
        "redhat",
        "dnf",
        "systemd",
        "dracut",
        "42",
        "docker.io/library/fedora:42",
        "dracut-live",
        "kernel",
        "grub2-efi-x64-modules",
    ),
    "rockylinux": (
        "redhat",
        "dnf",
        "systemd",
        "dracut",
        "9",
        "docker.io/rockylinux/rockylinux:9",
        "dracut-live",
        "kernel",
        "grub2-efi-x64-modules",
    ),
    "almalinux": (
        "redhat",
        "dnf",
        "systemd",
        "dracut",
        "9",
        "docker.io/library/almalinux:9",
        "dracut-live",
        "kernel",
        "grub2-efi-x64-modules",
    ),
    # openSUSE's own dracut package carries dmsquash-live.
    "opensuse": (
        "suse",
        "zypper",
        "systemd",
        "dracut",
        "leap-15.6",
        "registry.opensuse.org/opensuse/leap:15.6",
        "dracut",
        "kernel-default",
        "grub2-x86_64-efi",
    ),
    "alpine": (
        "alpine",
        "apk",
        "openrc",
        "mkinitfs",
        "3.21",
        "docker.io/library/alpine:3.21",
        "mkinitfs",
        "linux-lts",
        "grub-efi",
    ),
}


def test_every_flavor_is_expected_and_every_expected_flavor_exists() -> None:
    assert set(flavor_names()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_flavor_file_loads_with_the_distro_names(name: str) -> None:
    family, manager, init, initramfs, default, image, live, kernel, boot = EXPECTED[name]
    flavor = load_flavor(name)
    assert (flavor.family, flavor.package_manager, flavor.init, flavor.initramfs) == (
        family,
        manager,
        init,
        initramfs,
    )
    assert flavor.bootloader == "grub"
    release = flavor.release(None)
    assert (release.name, release.image) == (default, image)
    packages = flavor.all_packages(release)
    assert {live, kernel, boot} <= set(packages), packages
    assert len(packages) == len(set(packages))
    for role in ("kernel", "init", "initramfs", "bootloader", "filesystem", "system"):
        assert flavor.packages[role], role
    for other in flavor.releases.values():  # every release names a pullable image of the distro
        assert "/" in other.image and ":" in other.image.rsplit("/", 1)[-1], other.image


def test_releases_each_flavor_offers() -> None:
    assert list(load_flavor("ubuntu").releases) == ["24.04", "22.04"]
    assert set(load_flavor("fedora").releases) == {"40", "41", "42"}
    assert list(load_flavor("opensuse").releases) == ["leap-15.6", "tumbleweed"]
    assert set(load_flavor("alpine").releases) == {"3.19", "3.20", "3.21"}
    assert load_flavor("opensuse").release("tumbleweed").image.endswith("opensuse/tumbleweed:latest")


def test_a_release_replaces_the_roles_it_names() -> None:
    ubuntu = load_flavor("ubuntu")
    jammy = ubuntu.all_packages(ubuntu.release("22.04"))
    assert "linux-image-generic-hwe-22.04" in jammy and "linux-image-generic" not in jammy
    assert "linux-image-generic" in ubuntu.all_packages()  # the flavor's own default
    assert jammy.index("linux-image-generic-hwe-22.04") == 0  # the kernel role keeps its place


def test_quirks_are_data_with_defaults_for_debian() -> None:
    debian, alpine = load_flavor("debian"), load_flavor("alpine")
    assert debian.quirks.kernel_image == ("boot/vmlinuz-{kver}",)
    assert debian.quirks.initrd == "boot/initrd.img-{kver}"
    assert alpine.quirks.kernel_image == ("boot/vmlinuz-lts",)
    assert alpine.quirks.files == {"etc/update-grub.conf": "disable_trigger=1\n"}
    assert "udev" in alpine.quirks.services["sysinit"]
    assert load_flavor("rockylinux").quirks.install_options == ("--allowerasing",)
    assert load_flavor("fedora").quirks.initrd == "boot/initramfs-{kver}.img"
    assert "usr/lib/modules/{kver}/vmlinuz" in load_flavor("opensuse").quirks.kernel_image


@pytest.mark.parametrize(
    ("changes", "key", "fix"),
    [
        ({"quirks": {"kernel_imag": ["boot/vmlinuz"]}}, "quirks.kernel_imag", "kernel_image"),
        (
            {"quirks": {"kernel_image": ["/boot/vmlinuz-{kver}"]}},
            "quirks.kernel_image",
            "relative to / without '..'",
        ),
        (
            {"quirks": {"files": {"../../etc/passwd": "x"}}},
            "quirks.files.../../etc/passwd",
            "relative to / without '..'",
        ),
        ({"quirks": {"initrd": "initrd.img"}}, "quirks.initrd", "boot/initrd-{kver}"),
        ({"quirks": {"install_options": ["allowerasing"]}}, "quirks.install_options", "[--allowerasing]"),
        ({"quirks": {"services": {"sysinit": ["udev"]}}}, "quirks.services.sysinit", "enable, disable"),
        ({"quirks": {"services": {"enable": "sshd"}}}, "quirks.services.enable", "enable: [sshd]"),
        ({"quirks": ["install_options"]}, "quirks", "install_options, kernel_image"),
        ({"packages": {"kernel": ["linux image"]}}, "packages.kernel", "kernel: [linux-image-amd64]"),
        (
            {"releases": {"trixie": {"flavor_release": "13", "image": "x", "packages": {"kernel": "k"}}}},
            "releases.trixie.packages.kernel",
            "kernel: [linux-image-amd64]",
        ),
    ],
)
def test_a_wrong_quirk_names_file_key_and_fix(
    tmp_path: Path, changes: dict[str, object], key: str, fix: str
) -> None:
    assert_names_file_key_and_fix(tmp_path, changes, key, fix)


def test_openrc_services_are_checked_against_openrc_runlevels(tmp_path: Path) -> None:
    path = write_flavor(
        tmp_path, "mine", init="openrc", quirks={"services": {"boot": ["hwclock"], "enable": ["sshd"]}}
    )
    with pytest.raises(InputError, match="'quirks.services.enable' is not known for init openrc"):
        parse_flavor(path)
    path = write_flavor(tmp_path, "mine", init="openrc", quirks={"services": {"boot": ["hwclock"]}})
    assert parse_flavor(path).quirks.services == {"boot": ("hwclock",)}
