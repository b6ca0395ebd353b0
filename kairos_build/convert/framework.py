"""The framework layer: overlay files, /etc/kairos-release, a fresh identity, kernel links."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kairos_build import rootfs
from kairos_build.config import BuildConfig
from kairos_build.data import data_dir
from kairos_build.errors import InputError
from kairos_build.templates import render

# Files that make one machine distinct from another: every node must create its own. A
# bootstrap copies the build host's name into /etc/hostname; without it systemd falls back
# to its default name until cloud-config sets one.
IDENTITY_FILES = ("etc/machine-id", "var/lib/dbus/machine-id", "etc/hostname")
SSH_KEY_DIR = "etc/ssh"


def overlay_dirs(family: str) -> list[Path]:
    """overlays/common, then overlays/<family> when the family needs files of its own."""
    base = data_dir("overlays")
    return [d for d in (base / "common", base / family) if d.is_dir()]


def layer_overlays(root: Path, family: str) -> None:
    """Copy every overlay file into the rootfs (through `resolve_in`: links stay inside)."""
    for overlay in overlay_dirs(family):
        for dirpath, dirnames, filenames in os.walk(overlay):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                source = Path(dirpath, name)
                rel = source.relative_to(overlay).as_posix()
                st = source.lstat()
                if stat.S_ISLNK(st.st_mode):
                    rootfs.symlink(root, rel, os.readlink(source))
                elif stat.S_ISDIR(st.st_mode):
                    target = rootfs.resolve_in(root, rel, mkdirs=True)
                    target.mkdir(mode=0o755, exist_ok=True)
                else:
                    target = rootfs.resolve_in(root, rel, follow_last=False, mkdirs=True)
                    rootfs.remove(root, rel)
                    target.write_bytes(source.read_bytes())
                    os.chmod(target, stat.S_IMODE(st.st_mode))


def framework_units(family: str) -> list[str]:
    """Units our overlays ask to enable, read from the systemd preset files they ship.

    Enabling goes through presets rather than shipped symlinks: a wheel cannot carry a
    symlink, and `systemctl preset` inside the rootfs makes exactly the links systemd expects.
    """
    units = []
    for overlay in overlay_dirs(family):
        for preset in sorted((overlay / "usr/lib/systemd/system-preset").glob("*.preset")):
            for line in preset.read_text().splitlines():
                words = line.split()
                if len(words) == 2 and words[0] == "enable":
                    units.append(words[1])
    return units


def read_os_release(root: Path) -> dict[str, str]:
    """The base's os-release as a dict (values unquoted)."""
    text = rootfs.read_text(root, "etc/os-release") or rootfs.read_text(root, "usr/lib/os-release")
    values: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            values[key.strip()] = value.strip().strip("'\"")
    return values


def kairos_release_values(config: BuildConfig, flavor_release: str) -> dict[str, object]:
    name = f"kairos-{config.variant}-{config.flavor.name}-{flavor_release}"
    return {
        "id_like": name,
        "name": name,
        "version": config.version,
        "arch": config.arch,
        "flavor": config.flavor.name,
        "flavor_release": flavor_release,
        "family": config.flavor.family,
        "model": config.model,
        "variant": config.variant,
        "fips": False,
        "trusted_boot": False,
    }


def write_kairos_release(root: Path, config: BuildConfig) -> None:
    # The release the base really is (its os-release) wins over what the flavor file expects.
    flavor_release = read_os_release(root).get("VERSION_ID") or config.release.flavor_release
    text = render("kairos-release.j2", **kairos_release_values(config, flavor_release))
    rootfs.write_text(root, "etc/kairos-release", text)


def reset_identity(root: Path) -> None:
    """Remove machine-id and ssh host keys: each node generates its own at first boot."""
    for path in IDENTITY_FILES:
        rootfs.remove(root, path)
    ssh_dir = rootfs.resolve_in(root, SSH_KEY_DIR)
    if ssh_dir.is_dir():
        for key in ssh_dir.glob("ssh_host_*"):
            rootfs.remove(root, f"{SSH_KEY_DIR}/{key.name}")


def find_kernel_version(root: Path) -> str:
    """The one kernel of the rootfs (its /lib/modules entry with a matching /boot/vmlinuz-*)."""
    modules = rootfs.resolve_in(root, "lib/modules")
    versions = sorted(d.name for d in modules.iterdir() if d.is_dir()) if modules.is_dir() else []
    with_image = [v for v in versions if rootfs.resolve_in(root, f"boot/vmlinuz-{v}").is_file()]
    if not with_image:
        raise InputError("the rootfs has no kernel (no /boot/vmlinuz-VERSION with /lib/modules/VERSION)",
                         hint="the flavor's kernel packages did not install a kernel")
    if len(with_image) > 1:
        raise InputError(f"the rootfs has {len(with_image)} kernels ({', '.join(with_image)})",
                         hint="a Kairos image carries exactly one kernel; remove the others")
    return with_image[0]


def link_kernel(root: Path, kernel_version: str, initrd_name: str) -> None:
    """/boot/vmlinuz and /boot/initrd: the fixed names bootloaders and exporters use."""
    rootfs.symlink(root, "boot/vmlinuz", f"vmlinuz-{kernel_version}")
    rootfs.symlink(root, "boot/initrd", initrd_name)
