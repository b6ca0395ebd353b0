"""`kairos-agent reset`: from recovery, active and passive made again from the recovery image,
COS_PERSISTENT formatted unless told otherwise, COS_OEM too when asked.

Recovery boots with COS_PERSISTENT unmounted (the initramfs keeps persistent paths in memory
there), so it can be formatted. The system images are replaced one rename at a time, as an
upgrade does: a power cut leaves a complete image under each name.
"""

from __future__ import annotations

import os
from pathlib import Path

from kairos_build.agent import images, trusted
from kairos_build.agent.bootstate import (
    ASSESSMENT,
    GRUBENV,
    boot_state,
    read_grubenv,
    update_grubenv,
    write_grubenv,
)
from kairos_build.agent.config import ResetSpec
from kairos_build.agent.system import (
    NodeError,
    label_device,
    mounted,
    say,
    settle,
)
from kairos_build.agent.upgrade import STATE_MOUNT, image_size

RECOVERY_IMAGE = "cOS/recovery.squashfs"


def format_ext4(label: str) -> None:
    device = label_device(label)
    if device is None:
        raise NodeError(f"this node has no {label} partition")
    images.format_ext4(device, label)
    settle()


def reset_oem() -> None:
    """COS_OEM formatted (the node's configs go), grub's environment made again with the
    command line additions it had."""
    device = label_device("COS_OEM")
    if device is None:
        raise NodeError("this node has no COS_OEM partition")
    with mounted(device, "ro") as oem:
        extra = read_grubenv(oem / GRUBENV).get("extra_cmdline", "")
    say("formatting COS_OEM")
    format_ext4("COS_OEM")
    with mounted(device, "rw") as oem:
        write_grubenv(oem / GRUBENV, {"extra_cmdline": extra})


def redeploy(source: Path) -> None:
    device = label_device("COS_STATE")
    if device is None:
        raise NodeError("this node has no COS_STATE partition")
    with mounted(device, "rw") as state:
        folder = state / "cOS"
        size = image_size(source, folder / "active.img")
        say(f"writing the system image ({size >> 20} MiB) from recovery")
        images.deploy_system(source, folder, size)


def reset(spec: ResetSpec) -> None:
    booted = boot_state()
    if booted != "recovery_boot":
        raise NodeError(
            f"reset runs from the recovery system; this boot is {booted}",
            hint="boot the recovery or reset entry of the menu "
            "(`kairos-agent reset --reboot-to-recovery` does it)",
        )
    if trusted.is_trusted():
        trusted.reset(STATE_MOUNT, spec.reset_persistent)
        if spec.reset_oem:
            say("formatting COS_OEM")
            format_ext4("COS_OEM")
        os.sync()
        say("reset done: active and passive are the recovery system")
        return
    image = STATE_MOUNT / RECOVERY_IMAGE
    if not image.is_file():
        raise NodeError(f"{image} is missing: this recovery cannot reset the node")
    with mounted(image, "ro,loop", fstype="squashfs") as source:
        redeploy(source)
    if spec.reset_persistent:
        say("formatting COS_PERSISTENT")
        format_ext4("COS_PERSISTENT")
    if spec.reset_oem:
        reset_oem()
    update_grubenv({ASSESSMENT: "", "next_entry": ""})
    os.sync()
    say(
        "reset done: active and passive are the recovery system"
        + ("; COS_PERSISTENT is empty" if spec.reset_persistent else "")
    )


def reboot_to_recovery() -> None:
    """The reset entry starts on the next boot (once), which resets unattended."""
    if trusted.is_trusted():
        trusted.set_one_shot_entry("statereset")
        say("the next boot resets this node from recovery")
        return
    update_grubenv({"next_entry": "statereset"})
    say("the next boot resets this node from recovery")
