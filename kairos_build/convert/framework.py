"""The framework layer: overlay files, /etc/kairos-release, a fresh identity, kernel links."""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
from pathlib import Path

from kairos_build.agent import agent_files
from kairos_build.config.buildconfig import BuildConfig
from kairos_build.core import rootfs
from kairos_build.core.data import data_dir
from kairos_build.core.errors import InputError
from kairos_build.core.templates import render

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
    """Copy every overlay file into the rootfs, then the node agent's modules."""
    for overlay in overlay_dirs(family):
        layer_tree(root, overlay)
    layer_agent(root)


def layer_agent(root: Path) -> None:
    """kairos-agent's Python modules (overlays/ has its /usr/bin launcher), each replaced."""
    for rel, source in agent_files().items():
        target = rootfs.resolve_in(root, rel, follow_last=False, mkdirs=True)
        rootfs.remove(root, rel)
        shutil.copyfile(source, target)
        os.chmod(target, 0o644)
        os.chown(target, 0, 0)


def layer_tree(root: Path, source_dir: Path, only: str | None = None) -> None:
    """Copy the files under `source_dir` into the rootfs (through `resolve_in`: links stay
    inside), or only those at or under its relative path `only`. Files become root's; modes
    are kept; folders that exist keep theirs. A file is replaced, never written into (a
    stage's tree may share its files with the entry it started from: convert.copy_stage)."""
    for dirpath, dirnames, filenames in os.walk(source_dir):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            source = Path(dirpath, name)
            rel = source.relative_to(source_dir).as_posix()
            if only is not None and not (
                rel == only or rel.startswith(f"{only}/") or only.startswith(f"{rel}/")
            ):
                continue
            st = source.lstat()
            if stat.S_ISLNK(st.st_mode):
                rootfs.symlink(root, rel, os.readlink(source))
            elif stat.S_ISDIR(st.st_mode):
                target = rootfs.resolve_in(root, rel, mkdirs=True)
                target.mkdir(mode=0o755, exist_ok=True)
            elif stat.S_ISREG(st.st_mode):
                target = rootfs.resolve_in(root, rel, follow_last=False, mkdirs=True)
                rootfs.remove(root, rel)
                shutil.copyfile(source, target)
                os.chmod(target, stat.S_IMODE(st.st_mode))
                os.chown(target, 0, 0)
            # Sockets, fifos and devices are not files an image should get from a folder.


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


def base_flavor_release(os_release: dict[str, str], flavor: str) -> str | None:
    """The release the base really is, from its os-release. A distro whose ID is the flavor plus
    a variant (opensuse-leap, opensuse-tumbleweed) names the variant too, as Kairos does:
    leap-15.6, tumbleweed-20250101."""
    version, distro = os_release.get("VERSION_ID"), os_release.get("ID", "")
    if version and distro.startswith(f"{flavor}-"):
        return f"{distro.removeprefix(f'{flavor}-')}-{version}"
    return version


def write_kairos_release(root: Path, config: BuildConfig) -> None:
    # The release the base really is (its os-release) wins over what the flavor file expects.
    flavor_release = (
        base_flavor_release(read_os_release(root), config.flavor.name) or config.release.flavor_release
    )
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


# Caches whose content is the build host's view of the files (glibc's ldconfig keeps their
# inode numbers and ctimes): regenerated on the node, different on every build.
HOST_CACHES = ("var/cache/ldconfig/aux-cache",)
LOG_DIR = "var/log"


def empty_build_records(root: Path, since: float) -> None:
    """Empty the logs the conversion wrote (dpkg, apt, dnf, zypper, alternatives: each line
    dated the day of the build) and drop host caches, so two conversions give the same files.
    Logs keep their owner and mode; links are left alone (they may point anywhere), and so
    are files with other hard links (emptying one would empty its twin elsewhere)."""
    for path in HOST_CACHES:
        rootfs.remove(root, path)
    logs = rootfs.resolve_in(root, LOG_DIR)
    if not logs.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(logs):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_mtime >= since and st.st_size:
                fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
                os.close(fd)


DEFAULT_KERNEL_IMAGES = ("boot/vmlinuz-{kver}",)


def find_kernel(root: Path, images: tuple[str, ...] = DEFAULT_KERNEL_IMAGES) -> tuple[str, str]:
    """The one kernel of the rootfs: its /lib/modules name and its image (the first of the
    flavor's `kernel_image` paths that exists, {kver} standing for the name)."""
    modules = rootfs.resolve_in(root, "lib/modules")
    versions = sorted(d.name for d in modules.iterdir() if d.is_dir()) if modules.is_dir() else []
    found = {}
    for version in versions:
        candidates = [image.replace("{kver}", version) for image in images]
        image = next((c for c in candidates if rootfs.resolve_in(root, c).is_file()), None)
        if image is not None:
            found[version] = image
    if not found:
        wanted = " or ".join(f"/{image}" for image in images)
        raise InputError(
            f"the rootfs has no kernel (no {wanted} beside /lib/modules/VERSION)",
            hint="the flavor's kernel packages did not install a kernel, or its "
            "quirks.kernel_image names the wrong place",
        )
    if len(found) > 1:
        raise InputError(
            f"the rootfs has {len(found)} kernels ({', '.join(found)})",
            hint="a Kairos image carries exactly one kernel; remove the others",
        )
    return next(iter(found.items()))


def find_kernel_version(root: Path, images: tuple[str, ...] = DEFAULT_KERNEL_IMAGES) -> str:
    return find_kernel(root, images)[0]


def boot_link_target(path: str) -> str:
    """What a link in /boot points to for the rootfs path `path` (relative: stays inside)."""
    return posixpath.relpath(f"/{path}", "/boot")


def link_kernel(root: Path, kernel_version: str, initrd: str, image: str | None = None) -> None:
    """/boot/vmlinuz and /boot/initrd: the fixed names bootloaders and exporters use.

    `initrd` and `image` are rootfs paths (a bare name means a file in /boot)."""
    image = image or f"boot/vmlinuz-{kernel_version}"
    initrd = initrd if "/" in initrd else f"boot/{initrd}"
    rootfs.symlink(root, "boot/vmlinuz", boot_link_target(image))
    rootfs.symlink(root, "boot/initrd", boot_link_target(initrd))
