"""`kairos-agent upgrade`: a new system image in place, the running one kept as passive.

The new image is written whole as cOS/transition.img first. Then two renames, each synced:
active -> passive (unless this boot is passive: that image is the one known good), transition
-> active. A power cut before the first rename leaves the old system; between the two, grub
finds no active.img and falls back to passive, the old system; after the second, the new one
boots. Then grubenv gets `kairos_assessment=pending`: the next boot is on probation.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kairos_build.agent import trusted
from kairos_build.agent.bootstate import ASSESSMENT, boot_state, update_grubenv
from kairos_build.agent.images import make_ext4_image, source_tree
from kairos_build.agent.system import (
    NodeError,
    label_device,
    mounted,
    replace_durably,
    run,
    say,
    writable,
)
from kairos_build.core.rootfs import resolve_in
from kairos_build.disk.filesystems import RUNTIME_EXCLUDES, tree_bytes
from kairos_build.disk.layout import MiB, default_image_size

STATE_MOUNT = Path("/run/kairos/state")  # COS_STATE, mounted read-only by the initramfs
PERSISTENT_MOUNT = Path("/run/kairos/persistent")
SLACK = 16 * MiB


def scratch_dir() -> Path:
    """Where an image is unpacked: COS_PERSISTENT when mounted (room), else /var/tmp."""
    if os.path.ismount(PERSISTENT_MOUNT):
        return PERSISTENT_MOUNT / ".kairos-upgrade"
    return Path("/var/tmp/kairos-upgrade")


def image_size(tree: Path, current: Path) -> int:
    """The new image: as large as the one it replaces, larger when the tree needs it."""
    needed = default_image_size(tree_bytes(tree))
    return max(needed, current.stat().st_size if current.exists() else 0)


def check_room(folder: Path, size: int, what: str) -> None:
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    stale = folder / "transition.img"
    if stale.exists():
        free += stale.stat().st_blocks * 512
    if free < size + SLACK:
        raise NodeError(
            f"{what} has {free >> 20} MiB free; the new image needs {(size + SLACK) >> 20} MiB",
            hint="free space or make COS_STATE larger",
        )


def upgrade_system(tree: Path, state_mount: Path = STATE_MOUNT) -> str:
    booted = boot_state()
    images = state_mount / "cOS"
    size = image_size(tree, images / "active.img")
    check_room(images, size, "COS_STATE")
    with writable(state_mount):
        say(f"writing the new system image ({size >> 20} MiB)")
        make_ext4_image(tree, images / "transition.img", size, "COS_ACTIVE")
        if booted == "active_boot" and (images / "active.img").exists():
            replace_durably(images / "active.img", images / "passive.img")
        replace_durably(images / "transition.img", images / "active.img")
    update_grubenv({ASSESSMENT: "pending", "next_entry": ""})
    return booted


def upgrade_recovery(tree: Path) -> None:
    device = label_device("COS_RECOVERY")
    if device is None:
        raise NodeError("this node has no COS_RECOVERY partition")
    kernel, initrd = (resolve_in(tree, f"boot/{name}") for name in ("vmlinuz", "initrd"))
    for needed in (kernel, initrd):
        if not needed.is_file():
            raise NodeError(f"the new image has no /boot/{needed.name}")
    with mounted(device, "rw") as recovery:
        squashfs = recovery / "cOS" / "recovery.squashfs"
        check_room(squashfs.parent, tree_bytes(tree) // 2, "COS_RECOVERY")
        say("writing the new recovery image")
        new = squashfs.with_name("recovery.squashfs.new")
        run(
            [
                "mksquashfs",
                str(tree),
                str(new),
                "-noappend",
                "-quiet",
                "-no-progress",
                "-comp",
                "zstd",
                "-wildcards",
                "-e",
                *RUNTIME_EXCLUDES,
            ]
        )
        for source, name in ((kernel, "vmlinuz"), (initrd, "initrd")):
            target = recovery / "boot" / name
            shutil.copyfile(source, target.with_name(f"{name}.new"))
        replace_durably(new, squashfs)
        for name in ("initrd", "vmlinuz"):
            replace_durably(recovery / "boot" / f"{name}.new", recovery / "boot" / name)


def upgrade_trusted(source: str, recovery: bool, booted: str, insecure: bool) -> None:
    """A Trusted Boot node takes signed UKIs and images from a build, never makes its own: a
    `uki` folder (dir:), or a `uki-image` (an OCI archive or layout, or a registry image)."""
    if recovery:
        raise NodeError(
            "a Trusted Boot node's recovery is not upgraded yet",
            hint="upgrade the system; a reset lays back the recovery it has",
        )
    with source_tree(source, scratch_dir(), insecure, require=trusted.require_bundle) as tree:
        name = trusted.upgrade(tree, STATE_MOUNT, booted)
    say(
        f"upgraded to {name}: the next boot starts it with {trusted.TRIES} tries; "
        "systemd-boot falls back to passive when they run out"
    )


def upgrade(source: str, recovery: bool = False, insecure: bool = False) -> None:
    """`insecure`: the source's registry speaks plain HTTP (loopback registries always do)."""
    booted = boot_state()
    if booted in ("recovery_boot", "livecd_boot", "unknown"):
        raise NodeError(
            f"upgrade runs on an installed system booted from active or passive; this boot is {booted}",
            hint="reboot into the active system" if booted == "recovery_boot" else "install the node first",
        )
    if not os.path.ismount(STATE_MOUNT):
        raise NodeError(f"COS_STATE is not mounted at {STATE_MOUNT}")
    if trusted.is_trusted():
        upgrade_trusted(source, recovery, booted, insecure)
        return
    with source_tree(source, scratch_dir(), insecure) as tree:
        release = (tree / "etc" / "kairos-release").read_text()
        version = next(
            (
                line.split("=", 1)[1].strip().strip('"')
                for line in release.splitlines()
                if line.startswith("KAIROS_VERSION=")
            ),
            "unknown",
        )
        if recovery:
            upgrade_recovery(tree)
            say(f"recovery upgraded to {version}")
            return
        was = upgrade_system(tree)
        kept = (
            "passive keeps the system that was active"
            if was == "active_boot"
            else "passive (this boot) is kept"
        )
        say(f"upgraded to {version}: the next boot starts it; {kept}")
