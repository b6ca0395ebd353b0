"""Conversion: a distro rootfs in, the Kairos layout out. Each step is one function."""

from __future__ import annotations

from pathlib import Path

from kairos_build import rootfs
from kairos_build.config import BuildConfig
from kairos_build.convert.chroot import run_in_root
from kairos_build.convert.framework import (
    find_kernel_version,
    framework_units,
    layer_overlays,
    link_kernel,
    reset_identity,
    write_kairos_release,
)
from kairos_build.convert.initramfs import build_initramfs
from kairos_build.convert.packages import package_manager
from kairos_build.errors import require_root
from kairos_build.log import log, step
from kairos_build.tools import run


def copy_base(base: Path, target: Path) -> None:
    """The base stays untouched (it is a cache entry); conversion works on a copy."""
    run(["cp", "-a", "--reflink=auto", f"{base}/.", str(target)])


def is_converted(root: Path) -> bool:
    return rootfs.read_text(root, "etc/kairos-release") is not None


def convert_rootfs(base: Path, target: Path, config: BuildConfig) -> None:
    """Convert the rootfs at `base` into `target` (an empty directory)."""
    require_root("converting a rootfs")
    flavor = config.flavor
    with step("copying the base rootfs"):
        copy_base(base, target)
    if is_converted(target):
        log.info("  the base is already a Kairos image (it has /etc/kairos-release): "
                 "only refreshing the release file and the identity")
        write_kairos_release(target, config)
        reset_identity(target)
        return
    with step("layering framework files"):
        # Before the packages: the initramfs config must be in place when the kernel's
        # install hooks run.
        layer_overlays(target, flavor.family)
    with step(f"installing {len(flavor.all_packages())} packages with {flavor.package_manager}"):
        package_manager(flavor.package_manager).install(target, flavor.all_packages())
    if flavor.init == "systemd" and (units := framework_units(flavor.family)):
        run_in_root(target, ["systemctl", "preset", *units])
    with step("writing /etc/kairos-release"):
        write_kairos_release(target, config)
    kernel = find_kernel_version(target)
    with step(f"building the initramfs for kernel {kernel} with {flavor.initramfs}"):
        initrd = build_initramfs(target, flavor.initramfs, kernel)
    link_kernel(target, kernel, initrd)
    reset_identity(target)
