"""The conversion plan: what each flavor's conversion runs, printed by --dry-run, run by
convert_rootfs (here with the in-root runner recording instead of chrooting), and the same
commands rendered into Dockerfiles."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kairos_build.cli.app import app
from kairos_build.config.buildconfig import config_of
from kairos_build.convert import convert as convert_module
from kairos_build.convert.initramfs import initramfs_command
from kairos_build.convert.initramfs_reads import Reads
from kairos_build.convert.packages import MANAGERS, package_manager
from kairos_build.convert.plan import conversion_plan, describe_plan, kernel_link_script, shell_words
from kairos_build.convert.stages import convert_in_stages
from kairos_build.core import rootfs
from kairos_build.core.cache import Cache
from kairos_build.core.errors import InputError
from kairos_build.core.flavors import flavor_names
from kairos_build.pipelines.dockerfile import write_build_context
from kairos_build.source.resolve import Base

# The install command each manager runs, exactly (packages follow).
INSTALL = {
    "apt": "apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold",
    "dnf": "dnf -y install --setopt=install_weak_deps=False --setopt=max_parallel_downloads=10",
    "zypper": "zypper --non-interactive install --no-recommends",
    "apk": "apk --no-cache add --no-progress",
}
REFRESH = {
    "apt": ["apt-get update -q"],
    "dnf": ["dnf -y makecache"],
    "zypper": ["zypper --non-interactive --gpg-auto-import-keys refresh"],
    "apk": [],
}
CLEAN = {
    "apt": ["apt-get clean", "rm -rf /var/lib/apt/lists/*"],
    "dnf": ["dnf clean all"],
    "zypper": ["zypper --non-interactive clean --all"],
    "apk": [],
}
INITRAMFS = {
    "debian": "dracut --force --kver ${KVER} /boot/initrd.img-${KVER}",
    "ubuntu": "dracut --force --kver ${KVER} /boot/initrd.img-${KVER}",
    "fedora": "dracut --force --kver ${KVER} /boot/initramfs-${KVER}.img",
    "rockylinux": "dracut --force --kver ${KVER} /boot/initramfs-${KVER}.img",
    "almalinux": "dracut --force --kver ${KVER} /boot/initramfs-${KVER}.img",
    "opensuse": "dracut --force --kver ${KVER} /boot/initrd-${KVER}",
    "alpine": "mkinitfs -o /boot/initramfs-lts ${KVER}",
}
ORDER = [
    "copy_base",
    "write_flavor_files",
    "install_packages",
    "find_kernel",
    "build_initramfs",
    "layer_overlays",
    "enable_services",
    "write_kairos_release",
    "link_kernel",
    "reset_identity",
]
STAGE_OF = {
    "copy_base": "packages",
    "write_flavor_files": "packages",
    "install_packages": "packages",
    "find_kernel": "initramfs",
    "build_initramfs": "initramfs",
}


def test_the_apt_commands_are_the_ones_debian_was_converted_with() -> None:
    # The Debian conversion is tested for real (integration, boot): its argv must not drift.
    assert package_manager("apt").commands(["a", "b"]) == [
        ("apt-get", "update", "-q"),
        (
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confold",
            "a",
            "b",
        ),
        ("apt-get", "clean"),
        ("sh", "-c", "rm -rf /var/lib/apt/lists/*"),
    ]
    assert dict(package_manager("apt").env) == {
        "DEBIAN_FRONTEND": "noninteractive",
        "DEBCONF_NONINTERACTIVE_SEEN": "true",
    }
    with pytest.raises(InputError, match="pacman"):
        package_manager("pacman")


# How each manager keeps its downloads in the shared cache (mounted at /tmp/kairos-packages).
CACHED = {
    "apt": [
        "apt-get update -q",
        "apt-get -o Dir::Cache::Archives=/tmp/kairos-packages/ install -y -q "
        "--no-install-recommends -o Dpkg::Options::=--force-confold p1",
    ],
    "dnf": [
        "dnf --setopt=keepcache=True --setopt=cachedir=/tmp/kairos-packages -y makecache",
        "dnf --setopt=keepcache=True --setopt=cachedir=/tmp/kairos-packages -y install "
        "--setopt=install_weak_deps=False --setopt=max_parallel_downloads=10 p1",
    ],
    "zypper": [
        "zypper --non-interactive --gpg-auto-import-keys refresh",
        "zypper --pkg-cache-dir /tmp/kairos-packages --non-interactive install --no-recommends p1",
    ],
    "apk": ["apk --cache-dir /tmp/kairos-packages add --no-progress p1"],
}


@pytest.mark.parametrize("manager", sorted(MANAGERS))
def test_with_the_package_cache_downloads_go_there_and_clean_stays_the_images(manager: str) -> None:
    lines = [shell_words(a) for a in package_manager(manager).commands(["p1"], cache=True)]
    assert lines == [*CACHED[manager], *CLEAN[manager]]


@pytest.mark.parametrize("manager", sorted(MANAGERS))
def test_each_manager_is_refresh_install_clean(manager: str) -> None:
    lines = [shell_words(argv) for argv in package_manager(manager).commands(["p1", "p2"], ["--x"])]
    assert lines == [*REFRESH[manager], f"{INSTALL[manager]} --x p1 p2", *CLEAN[manager]]


@pytest.mark.parametrize("name", sorted(INITRAMFS))
def test_dry_run_plan_for_every_flavor(name: str, tmp_path: Path) -> None:
    config = config_of({"flavor": name, "cache-dir": tmp_path})
    steps = conversion_plan(config, "docker://example/base:1")
    assert [s.name for s in steps] == ORDER  # every flavor enables something (framework units or openrc)
    assert {s.name: s.stage for s in steps} == {n: STAGE_OF.get(n, "framework") for n in ORDER}
    text = describe_plan(steps)
    manager = config.flavor.package_manager
    install = " ".join(
        [INSTALL[manager], *config.flavor.quirks.install_options, *config.flavor.all_packages(config.release)]
    )
    assert f"   $ {install}\n" in text, text
    for line in REFRESH[manager] + CLEAN[manager]:
        assert f"   $ {line}\n" in text + "\n"
    assert f"   $ {INITRAMFS[name]}" in text
    assert "copy the base docker://example/base:1" in text
    assert "remove /etc/machine-id" in text and "remove /etc/ssh/ssh_host_*" in text
    # the order people read is the order of the work, stage by stage
    assert (
        text.index("stage packages:")
        < text.index(INSTALL[manager])
        < text.index("stage initramfs:")
        < text.index(INITRAMFS[name])
        < text.index("stage framework:")
        < text.index("kairos-release")
    )


def test_rocky_plan_allows_erasing_and_disables_the_metadata_timer(tmp_path: Path) -> None:
    text = describe_plan(conversion_plan(config_of({"flavor": "rockylinux", "cache-dir": tmp_path})))
    assert (
        "$ dnf -y install --setopt=install_weak_deps=False --setopt=max_parallel_downloads=10 "
        "--allowerasing kernel "
    ) in text
    assert "$ systemctl preset kairos-boot-report.service" in text
    assert "$ systemctl disable dnf-makecache.timer" in text
    assert "/boot/vmlinuz -> vmlinuz-${KVER} (or the other image found)" in text


def test_alpine_plan_uses_openrc_runlevels_and_flavour_named_kernel(tmp_path: Path) -> None:
    steps = conversion_plan(config_of({"flavor": "alpine", "release": "3.19", "cache-dir": tmp_path}))
    text = describe_plan(steps)
    assert "$ rc-update add udev sysinit" in text and "$ rc-update add sshd default" in text
    assert "systemctl" not in text  # no systemd on Alpine
    assert "# write /etc/update-grub.conf" in text
    assert "# /boot/vmlinuz -> vmlinuz-lts" in text and "# /boot/initrd -> initramfs-lts" in text
    assert "else 3.19" in text


def test_ubuntu_release_kernel_lands_in_the_install_command(tmp_path: Path) -> None:
    text = describe_plan(
        conversion_plan(config_of({"flavor": "ubuntu", "release": "22.04", "cache-dir": tmp_path}))
    )
    assert " linux-image-generic-hwe-22.04 " in text and "linux-image-generic " not in text


def test_cli_dry_run_needs_no_root_no_network_no_base(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the dry run touched the network")

    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # require_root would refuse now
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    cache = tmp_path / "cache"
    result = CliRunner().invoke(
        app,
        [
            "convert",
            "docker://nowhere.invalid/none:1",
            "--flavor",
            "opensuse",
            "--release",
            "tumbleweed",
            "--dry-run",
            "--cache-dir",
            str(cache),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "conversion plan for opensuse tumbleweed (nothing was run):" in result.output
    assert "$ zypper --non-interactive install --no-recommends kernel-default " in result.output
    assert "$ dracut --force --kver ${KVER} /boot/initrd-${KVER}" in result.output
    assert not cache.exists()

    as_json = CliRunner().invoke(app, ["convert", "x", "--flavor", "fedora", "--dry-run", "--json"])
    plan = json.loads(as_json.output)
    assert [s["name"] for s in plan["steps"]] == ORDER and plan["release"] == "42"
    install = next(s for s in plan["steps"] if s["name"] == "install_packages")
    assert install["commands"][1][:4] == ["dnf", "-y", "install", "--setopt=install_weak_deps=False"]


def test_cli_convert_without_output_or_dry_run_says_what_to_do() -> None:
    result = CliRunner().invoke(app, ["convert", "x"])
    assert result.exit_code != 0 and "needs --output" in str(result.exception)


def test_flavors_json_lists_every_flavor_with_what_it_uses() -> None:
    result = CliRunner().invoke(app, ["flavors", "--json"])
    rows = {row["name"]: row for row in json.loads(result.output)["flavors"]}
    assert set(rows) == set(flavor_names())
    assert rows["alpine"] | {} == {
        "name": "alpine",
        "pretty_name": "Alpine Linux",
        "family": "alpine",
        "default_release": "3.21",
        "releases": ["3.21", "3.20", "3.19"],
        "images": {
            "3.21": "docker.io/library/alpine:3.21",
            "3.20": "docker.io/library/alpine:3.20",
            "3.19": "docker.io/library/alpine:3.19",
        },
        "package_manager": "apk",
        "init": "openrc",
        "bootloader": "grub",
        "initramfs": "mkinitfs",
    }
    assert rows["opensuse"]["images"]["leap-15.6"] == "registry.opensuse.org/opensuse/leap:15.6"
    plain = CliRunner().invoke(app, ["flavors"])
    assert "rockylinux  redhat  releases: 9 (default 9); dnf, systemd, grub, dracut" in plain.output


@pytest.mark.parametrize("name", sorted(INITRAMFS))
def test_dockerfile_renders_the_plan_for_every_flavor(name: str, tmp_path: Path) -> None:
    config = config_of({"flavor": name, "cache-dir": tmp_path})
    dockerfile = write_build_context(config, tmp_path / "ctx").read_text()
    manager = config.flavor.package_manager
    steps = {s.name: s for s in conversion_plan(config)}
    run = "RUN " + " \\\n && ".join(
        shell_words(argv) for key in ("install_packages", "enable_services") for argv in steps[key].commands
    )
    assert run in dockerfile
    assert f"{INSTALL[manager]} " in run and INITRAMFS[name] in dockerfile
    assert f"FROM {config.release.image}\n" in dockerfile
    assert ("ARG DEBIAN_FRONTEND=noninteractive" in dockerfile) == (manager == "apt")
    assert dockerfile.index("COPY kairos-release") < dockerfile.index(INITRAMFS[name])
    assert "rm -f /etc/machine-id /var/lib/dbus/machine-id /etc/ssh/ssh_host_*" in dockerfile
    # Every RUN is valid shell (dash: what /bin/sh is on Debian and close to busybox ash).
    for body in dockerfile.split("\nRUN ")[1:]:
        script = body.split("\n\n")[0].replace("\\\n", " ")  # docker joins the lines
        check = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
        assert check.returncode == 0, (script, check.stderr)


def test_dockerfile_carries_the_flavor_files_in_its_overlay(tmp_path: Path) -> None:
    config = config_of({"flavor": "alpine", "cache-dir": tmp_path})
    text = write_build_context(config, tmp_path / "ctx", "docker://mirror.example/alpine:3.21").read_text()
    assert (tmp_path / "ctx/overlay/etc/update-grub.conf").read_text() == "disable_trigger=1\n"
    assert "FROM mirror.example/alpine:3.21\n" in text
    assert 'ln -sf "vmlinuz-lts" /boot/vmlinuz' in text
    assert " && rc-update add udev sysinit \\\n" in text


def test_kernel_link_script_picks_the_first_image_that_exists(tmp_path: Path) -> None:
    script = kernel_link_script(
        ("boot/vmlinuz-{kver}", "usr/lib/modules/{kver}/vmlinuz"), "boot/initramfs-{kver}.img"
    )
    # Run it for real in a scratch tree: rebase the absolute paths onto it.
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "usr/lib/modules/6.9.0").mkdir(parents=True)
    (root / "usr/lib/modules/6.9.0/vmlinuz").write_bytes(b"MZ")
    rebased = (
        script.replace('"/boot', f'"{root}/boot')
        .replace('"/usr', f'"{root}/usr')
        .replace(" /boot/", f" {root}/boot/")
    )
    done = subprocess.run(["sh", "-c", f"KVER=6.9.0; {rebased}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.readlink(root / "boot/vmlinuz") == "../usr/lib/modules/6.9.0/vmlinuz"
    assert os.readlink(root / "boot/initrd") == "initramfs-6.9.0.img"
    (root / "usr/lib/modules/6.9.0/vmlinuz").unlink()
    failed = subprocess.run(["sh", "-c", f"KVER=6.9.0; {rebased}"], capture_output=True, text=True)
    assert failed.returncode == 1 and "no kernel image for 6.9.0" in failed.stderr


def fake_tree(root: Path, os_release: str) -> Path:
    for folder in ("etc", "boot", "lib/modules", "usr/lib", "proc", "sys", "dev", "run", "tmp"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text(os_release)
    (root / "etc/machine-id").write_text("0123\n")
    return root


@pytest.mark.parametrize(
    ("name", "kver", "image", "vmlinuz", "initrd"),
    [
        ("alpine", "6.12.13-0-lts", "boot/vmlinuz-lts", "vmlinuz-lts", "initramfs-lts"),
        (
            "fedora",
            "6.11.4-301.fc41.x86_64",
            "usr/lib/modules/6.11.4-301.fc41.x86_64/vmlinuz",
            "../usr/lib/modules/6.11.4-301.fc41.x86_64/vmlinuz",
            "initramfs-6.11.4-301.fc41.x86_64.img",
        ),
    ],
)
def test_convert_runs_the_plan_commands_in_order(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    name: str,
    kver: str,
    image: str,
    vmlinuz: str,
    initrd: str,
) -> None:
    """The wiring of the conversion's stages for flavors this machine cannot install for real:
    the commands they would run inside the rootfs are recorded; the 'package install' makes a
    kernel, the initramfs command its image."""
    config = config_of({"flavor": name, "cache-dir": tmp_path})
    base = fake_tree(tmp_path / "base", f"ID={name}\nVERSION_ID=9.9\n")
    ran: list[tuple[str, ...]] = []
    manager = package_manager(config.flavor.package_manager)
    plan = {s.name: s for s in conversion_plan(config)}
    initramfs = plan["build_initramfs"].commands[0]

    def record(root: Path, argv: tuple[str, ...], **_options: object) -> str:
        ran.append(tuple(argv))
        if set(manager.install) <= set(argv):  # the package install makes the kernel
            (root / "lib/modules" / kver).mkdir(parents=True, exist_ok=True)
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            (root / image).write_bytes(b"MZ")
        if argv[0] == initramfs[0]:  # the tool: its image, and the staging folder it keeps
            output = argv[argv.index("-o") + 1] if "-o" in argv else argv[-1]
            (root / output.lstrip("/")).write_bytes(b"initramfs")
            keep = (
                argv[argv.index("--tmpdir") + 1] + "/dracut.1/initramfs"
                if "--tmpdir" in argv
                else argv[argv.index("-t") + 1]
            )
            (root / keep.lstrip("/") / "etc").mkdir(parents=True)
            (root / keep.lstrip("/") / "etc/os-release").write_text("copied")
        return ""

    monkeypatch.setattr(convert_module, "run_in_root", record)
    monkeypatch.setattr("kairos_build.convert.packages.run_in_root", record)
    monkeypatch.setattr(convert_module, "require_root", lambda _what: None)
    target, _stage = convert_in_stages(
        config, Base(base, "base-key", "a fake base"), Cache(tmp_path / "cache")
    )

    installing = manager.commands(
        config.flavor.all_packages(config.release), config.flavor.quirks.install_options, cache=True
    )
    kept = initramfs_command(
        config.flavor.initramfs, config.flavor.quirks.initrd, keep="/var/tmp/kairos-initramfs"
    )
    expected = [
        *installing,
        tuple(a.replace("{kver}", kver) for a in kept),
        *plan["enable_services"].commands,
    ]
    assert ran == expected
    reads = Reads.load(target.parent.parent / "initramfs" / _stage_key(target, "initramfs"))
    assert reads is not None and reads.files == ("etc/os-release",)
    assert rootfs.read_text(target, f"boot/{initrd}") == "initramfs"
    assert os.readlink(target / "boot/vmlinuz") == vmlinuz
    assert os.readlink(target / "boot/initrd") == initrd
    assert 'KAIROS_FLAVOR_RELEASE="9.9"' in (target / "etc/kairos-release").read_text()
    assert not (target / "etc/machine-id").exists()
    for path, text in config.flavor.quirks.files.items():
        assert (target / path).read_text() == text


def _stage_key(converted: Path, kind: str) -> str:
    """The key of the one `kind` entry beside the converted rootfs `converted`."""
    return next(p.name for p in (converted.parent.parent / kind).iterdir() if not p.name.startswith("."))
