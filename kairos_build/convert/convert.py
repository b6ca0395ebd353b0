"""Conversion: a distro rootfs in, the Kairos layout out, as three stages that each fill a
cache entry (convert/stages.py keys them):

- packages: the base plus the flavor's packages, installed by the distro's own package manager;
- initramfs: the initramfs alone, built on the packages tree plus the framework's files for the
  initramfs tool (its configuration and our dracut module), nothing else of the framework;
- framework: the packages tree plus every framework file, the services, /etc/kairos-release,
  the initramfs in place, a fresh identity.

Each step is one function; the commands that run inside the rootfs come from the plan
(convert/plan.py), the same data that `--dry-run` prints and `kairos-build dockerfile` renders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kairos_build.config.buildconfig import BuildConfig
from kairos_build.convert.framework import (
    empty_build_records,
    find_kernel,
    layer_overlays,
    layer_tree,
    link_kernel,
    overlay_dirs,
    reset_identity,
    write_kairos_release,
)
from kairos_build.convert.initramfs import (
    KVER,
    initramfs_command,
    initramfs_paths,
    staging_folder,
    with_kernel,
)
from kairos_build.convert.initramfs_reads import (
    READS_FILE,
    Reads,
    copied_files,
    reads_digest,
    script_words,
)
from kairos_build.convert.packages import package_manager, run_package_commands
from kairos_build.convert.plan import Step, conversion_plan, install_env
from kairos_build.core import rootfs
from kairos_build.core.errors import BuildError, require_root
from kairos_build.core.flavors import Flavor
from kairos_build.core.log import log, step
from kairos_build.core.reproducible import build_epoch, clamp_newer
from kairos_build.core.sandbox import run_in_root
from kairos_build.core.tools import run

# What the initramfs stage leaves in its entry: the image, and the kernel it is for.
INITRD_FILE, KERNEL_FILE = "initrd", "kernel-version"


def copy_base(base: Path, target: Path) -> None:
    """The base stays untouched (it is a cache entry); conversion works on a copy."""
    run(["cp", "-a", "--reflink=auto", f"{base}/.", str(target)])


_reflinks: dict[Path, bool] = {}


def can_reflink(folder: Path) -> bool:
    """Whether the filesystem of `folder` clones files (btrfs, XFS): tried once per folder."""
    if folder not in _reflinks:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".reflink-") as probe:
            (Path(probe) / "a").write_bytes(b"x")
            result = subprocess.run(
                ["cp", "--reflink=always", f"{probe}/a", f"{probe}/b"], capture_output=True, check=False
            )
            _reflinks[folder] = result.returncode == 0
    return _reflinks[folder]


def copy_stage(source: Path, target: Path) -> None:
    """Start a stage from the earlier stage's entry: clones where the filesystem makes them
    (copy-on-write), else hard links (ext4: 0.4 s instead of 4.5 s for Debian's 20,000 files).

    With hard links the two entries share their files, so a stage never writes into a file it
    did not make: every write of ours replaces the file (rootfs.write_text, layer_tree,
    rootfs.symlink unlink first), the initramfs tool writes a file removed beforehand, and
    the services are enabled with links. Dates are clamped in the packages stage, which owns
    those files: a later clamp sets at most a shared file's access time back (reading it
    moved it), never its content or modification time."""
    if can_reflink(target.parent):
        run(["cp", "-a", "--reflink=always", f"{source}/.", str(target)])
    elif os.stat(source).st_dev == os.stat(target).st_dev:
        run(["cp", "-al", f"{source}/.", str(target)])
    else:  # a cache folder on another filesystem than its neighbour (a link): a plain copy
        copy_base(source, target)


def is_converted(root: Path) -> bool:
    return rootfs.read_text(root, "etc/kairos-release") is not None


# The base is copied with cp; packages, services and the initramfs are installed by commands run
# under bubblewrap behind setpriv (core/sandbox.py).
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


def run_step(root: Path, planned: Step, epoch: int) -> None:
    for argv in planned.commands:
        run_in_root(root, argv, env=dated(planned.env, epoch))


def dated(env: Sequence[tuple[str, str]], epoch: int) -> dict[str, str]:
    """A step's environment plus SOURCE_DATE_EPOCH: what honours it inside the rootfs (shadow's
    useradd and systemd-sysusers for password dates, dracut's reproducible mode) writes the
    build date instead of the day it runs."""
    return {**dict(env), "SOURCE_DATE_EPOCH": str(epoch)}


def _plan(config: BuildConfig) -> dict[str, Step]:
    return {planned.name: planned for planned in conversion_plan(config)}


def install_packages(
    base: Path, target: Path, config: BuildConfig, package_cache: Path | None = None
) -> None:
    """The packages stage: the base at `base` plus the flavor's packages, into `target`."""
    require_root("converting a rootfs")
    flavor = config.flavor
    with step("copying the base rootfs"):
        copy_base(base, target)
    # Reproducible images: one date for everything (SOURCE_DATE_EPOCH, default the base's).
    epoch = build_epoch(target)
    started = time.time()
    write_flavor_files(target, flavor)
    names = flavor.all_packages(config.release)
    commands = package_manager(flavor.package_manager).commands(
        names, flavor.quirks.install_options, cache=package_cache is not None
    )
    with step(f"installing {len(names)} packages with {flavor.package_manager}"):
        run_package_commands(
            target, commands, tuple(dated(install_env(flavor), epoch).items()), package_cache
        )
    empty_build_records(target, started)
    clamp_newer(target, epoch)


# Where the initramfs tool keeps its staging folder (inside the stage's throw-away tree).
_KEEP = "var/tmp/kairos-initramfs"


def build_initramfs(packages_root: Path, target: Path, config: BuildConfig, inputs: dict[str, str]) -> None:
    """The initramfs stage: the image, its kernel's name and what it was made from
    (initramfs_reads.Reads, with the stage's `inputs`) in `target`, built on a copy of the
    packages tree that gets only the framework files of the initramfs tool."""
    require_root("converting a rootfs")
    flavor = config.flavor
    kernel, _image = find_kernel(packages_root, flavor.quirks.kernel_image)
    initrd = flavor.quirks.initrd.replace(KVER, kernel)
    own = initramfs_paths(flavor.initramfs)
    work = target / "tree"
    work.mkdir()
    try:
        copy_stage(packages_root, work)
        epoch = build_epoch(work)
        for overlay in overlay_dirs(flavor.family):
            for path in own:
                layer_tree(work, overlay, only=path)
        rootfs.remove(work, initrd)  # a hard link to the packages entry: never written into
        rootfs.resolve_in(work, _KEEP, mkdirs=True).mkdir(exist_ok=True)
        command = with_kernel(
            initramfs_command(flavor.initramfs, flavor.quirks.initrd, keep=f"/{_KEEP}"), kernel
        )
        with step(f"building the initramfs for kernel {kernel} with {flavor.initramfs}"):
            run_in_root(work, command, env=dated((), epoch))
        built = rootfs.regular_file(work, initrd)
        staging = staging_folder(flavor.initramfs, rootfs.resolve_in(work, _KEEP))
        if built is None:
            raise BuildError(f"{flavor.initramfs} ended without writing /{initrd}")
        if staging is None:
            raise BuildError(
                f"{flavor.initramfs} kept no staging folder under /{_KEEP}",
                hint="its version may not support keeping it (dracut --keep, mkinitfs -k)",
            )
        files = copied_files(packages_root, staging, own)
        words = script_words(packages_root, own)
        Reads(inputs, files, words, reads_digest(packages_root, files, words)).save(target)
        os.rename(built, target / INITRD_FILE)
        os.utime(target / INITRD_FILE, (epoch, epoch))
        (target / KERNEL_FILE).write_text(kernel + "\n")
    finally:
        shutil.rmtree(work)


def reuse_initramfs(
    packages_root: Path, target: Path, donors: Sequence[Path], inputs: dict[str, str]
) -> bool:
    """Link into `target` the first of `donors` (initramfs entries, newest first) made with
    the same `inputs` from files that this packages tree has alike; False if none was."""
    for donor in donors:
        reads = Reads.load(donor)
        if reads is None or reads.inputs != inputs:
            continue
        if reads_digest(packages_root, reads.files, reads.words) != reads.digest:
            continue
        try:
            for name in (INITRD_FILE, KERNEL_FILE, READS_FILE):
                os.link(donor / name, target / name)
        except OSError:  # pruned meanwhile: build instead
            for name in (INITRD_FILE, KERNEL_FILE, READS_FILE):
                (target / name).unlink(missing_ok=True)
            continue
        log.info(
            "  taking the initramfs of %s: the %d files it copied, the programs its "
            "modules look for and the kernel's modules and firmware are the same here",
            donor.name[:12],
            len(reads.files),
        )
        return True
    return False


def apply_framework(packages_root: Path, initramfs: Path, target: Path, config: BuildConfig) -> None:
    """The framework stage: the packages tree plus the framework files, services, release file,
    the initramfs stage's image and a fresh identity, into `target`."""
    require_root("converting a rootfs")
    flavor = config.flavor
    plan = _plan(config)
    started = time.time()
    with step("layering framework files"):
        copy_stage(packages_root, target)
        epoch = build_epoch(target)
        layer_overlays(target, flavor.family)
    if "enable_services" in plan:
        run_step(target, plan["enable_services"], epoch)
    with step("writing /etc/kairos-release"):
        write_kairos_release(target, config)
    kernel, image = find_kernel(target, flavor.quirks.kernel_image)
    if (initramfs / KERNEL_FILE).read_text().strip() != kernel:
        raise BuildError(f"the cached initramfs {initramfs.name} is not for kernel {kernel}")
    initrd = flavor.quirks.initrd.replace(KVER, kernel)
    rootfs.remove(target, initrd)
    shutil.copy2(initramfs / INITRD_FILE, rootfs.resolve_in(target, initrd, follow_last=False))
    link_kernel(target, kernel, initrd, image)
    reset_identity(target)
    empty_build_records(target, started)
    clamp_newer(target, epoch)


def refresh_converted(base: Path, target: Path, config: BuildConfig) -> None:
    """A base that is a Kairos image already: copied, its release file and identity rewritten."""
    with step("copying the base rootfs"):
        copy_base(base, target)
    epoch = build_epoch(target)
    log.info(
        "  the base is already a Kairos image (it has /etc/kairos-release): "
        "only refreshing the release file and the identity"
    )
    write_kairos_release(target, config)
    reset_identity(target)
    clamp_newer(target, epoch)
