"""Conversion: a distro rootfs in, the Kairos layout out. Each step is one function; the
commands that run inside the rootfs come from the plan (convert/plan.py), the same data that
`--dry-run` prints and `kairos-build dockerfile` renders."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from kairos_build import rootfs
from kairos_build.config import BuildConfig
from kairos_build.convert.framework import (
    empty_build_records,
    find_kernel,
    layer_overlays,
    link_kernel,
    reset_identity,
    write_kairos_release,
)
from kairos_build.convert.initramfs import KVER, with_kernel
from kairos_build.convert.packages import run_package_commands
from kairos_build.convert.plan import Step, conversion_plan
from kairos_build.convert.sandbox import run_in_root
from kairos_build.errors import require_root
from kairos_build.flavors import Flavor
from kairos_build.log import log, step
from kairos_build.reproducible import build_epoch, clamp_newer
from kairos_build.tools import run


def copy_base(base: Path, target: Path) -> None:
    """The base stays untouched (it is a cache entry); conversion works on a copy."""
    run(["cp", "-a", "--reflink=auto", f"{base}/.", str(target)])


def is_converted(root: Path) -> bool:
    return rootfs.read_text(root, "etc/kairos-release") is not None


# The base is copied with cp; packages, services and the initramfs are installed by commands run
# under bubblewrap behind setpriv (convert/sandbox.py).
CONVERSION_TOOLS = ("cp", "bwrap", "setpriv")
# A base that is already a Kairos image is only copied, its release file and identity rewritten.
REFRESH_TOOLS = ("cp",)


def conversion_tools(base_root: Path | None) -> tuple[str, ...]:
    """The host programs converting a base drives; `base_root` is the base's folder when it is
    known before resolving it (a dir: base), else None and a full conversion is assumed."""
    return REFRESH_TOOLS if base_root is not None and is_converted(base_root) else CONVERSION_TOOLS


def write_flavor_files(root: Path, flavor: Flavor) -> None:
    """The flavor's quirks.files (e.g. a switch that keeps a package trigger from probing
    the build host's disks), written like overlay files: through resolve_in."""
    for path, text in sorted(flavor.quirks.files.items()):
        rootfs.write_text(root, path, text)


def run_step(root: Path, planned: Step, epoch: int, kernel_version: str | None = None) -> None:
    for argv in planned.commands:
        run_in_root(root, with_kernel(argv, kernel_version) if kernel_version else argv,
                    env=dated(planned.env, epoch))


def dated(env: Sequence[tuple[str, str]], epoch: int) -> dict[str, str]:
    """A step's environment plus SOURCE_DATE_EPOCH: what honours it inside the rootfs (shadow's
    useradd and systemd-sysusers for password dates, dracut's reproducible mode) writes the
    build date instead of the day it runs."""
    return {**dict(env), "SOURCE_DATE_EPOCH": str(epoch)}


def convert_rootfs(base: Path, target: Path, config: BuildConfig) -> None:
    """Convert the rootfs at `base` into `target` (an empty directory)."""
    require_root("converting a rootfs")
    flavor = config.flavor
    plan = {planned.name: planned for planned in conversion_plan(config)}
    with step("copying the base rootfs"):
        copy_base(base, target)
    # Reproducible images: one date for everything (SOURCE_DATE_EPOCH, default the base's).
    epoch = build_epoch(target)
    if is_converted(target):
        log.info("  the base is already a Kairos image (it has /etc/kairos-release): "
                 "only refreshing the release file and the identity")
        write_kairos_release(target, config)
        reset_identity(target)
        clamp_newer(target, epoch)
        return
    started = time.time()
    with step("layering framework files"):
        # Before the packages: the initramfs config must be in place when the kernel's
        # install hooks run.
        layer_overlays(target, flavor.family)
        write_flavor_files(target, flavor)
    packages = plan["install_packages"]
    count = len(flavor.all_packages(config.release))
    with step(f"installing {count} packages with {flavor.package_manager}"):
        run_package_commands(target, packages.commands, tuple(dated(packages.env, epoch).items()))
    if "enable_services" in plan:
        run_step(target, plan["enable_services"], epoch)
    with step("writing /etc/kairos-release"):
        write_kairos_release(target, config)
    kernel, image = find_kernel(target, flavor.quirks.kernel_image)
    with step(f"building the initramfs for kernel {kernel} with {flavor.initramfs}"):
        run_step(target, plan["build_initramfs"], epoch, kernel)
    link_kernel(target, kernel, flavor.quirks.initrd.replace(KVER, kernel), image)
    reset_identity(target)
    empty_build_records(target, started)
    clamp_newer(target, epoch)
