"""`kairos-agent install`: the live system onto a disk, in the raw exporter's layout.

Order is for power cuts: partitions and filesystems, then recovery, the system images and
COS_OEM, the boot loaders last. A disk cut off before the end has no boot loader, so the
firmware goes on to the live medium, whose config installs again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kairos_build.agent import trusted
from kairos_build.agent.bootstate import GRUBENV, boot_state, write_grubenv
from kairos_build.agent.config import InstallSpec
from kairos_build.agent.disks import disk_size, partition_device, pick_device
from kairos_build.agent.images import deploy_system, format_ext4
from kairos_build.agent.system import NodeError, mounted, run, say, settle
from kairos_build.core.errors import InputError
from kairos_build.disk import kit
from kairos_build.disk.bootsector import BootSectorError, write_bios_boot
from kairos_build.disk.filesystems import tree_bytes
from kairos_build.disk.layout import DiskOptions, Layout, MiB, align_up, plan_layout, sfdisk_script

LIVE_MEDIUM = Path("/run/initramfs/live")
LIVE_ROOT = Path("/run/rootfsbase")  # the live squashfs, as built (no runtime changes)
# A Trusted Boot ISO, mounted by the initramfs as it boots the verified image from it.
TRUSTED_MEDIUM = Path("/run/kairos/state")
TRUSTED_ESP = 512 * MiB  # the build's (kairos_build/trusted/disk.py): room for an upgrade
MEDIUM_FILES = {
    "rootfs.squashfs": "cOS/recovery.squashfs",
    "boot/kernel": "boot/vmlinuz",
    "boot/initrd": "boot/initrd",
}
CONFIG_NAME = "90_custom.yaml"
IMMUTABLE_CONF = "immutable.conf"  # on COS_OEM: install's bind_mounts and ephemeral_mounts


def plan(spec: InstallSpec, device: Path, rootfs_bytes: int, recovery_bytes: int) -> Layout:
    size = disk_size(device.name)
    options = DiskOptions(firmware="both", disk_size=size, sizes=spec.sizes)
    try:
        return plan_layout(options, rootfs_bytes, recovery_bytes, seed=f"install/{size}")
    except InputError as exc:
        raise NodeError(
            f"{device} ({size / (1 << 30):.2f} GiB) is too small: {exc.message}",
            hint="use a larger disk or smaller install.partitions sizes",
        ) from exc


def partition(device: Path, layout: Layout, blank: tuple[str, ...] = ()) -> dict[str, Path]:
    """The table written, each partition formatted but those in `blank`; name -> device."""
    run(["wipefs", "--all", "--force", str(device)])
    run(
        ["sfdisk", "--quiet", "--wipe", "always", "--wipe-partitions", "always", str(device)],
        input_text=sfdisk_script(layout),
    )
    settle()
    devices = {}
    for number, part in enumerate(layout.partitions, start=1):
        node = partition_device(device, number)
        devices[part.name] = node
        if part.name in blank:
            continue
        if part.name == "efi":
            run(["mkfs.vfat", "-F", "32", "-n", "COS_GRUB", str(node)])
        elif part.label is not None:
            format_ext4(node, part.label)
    settle()
    return devices


def copy_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def copy_tree(source: Path, target: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(source):
        for name in filenames:
            path = Path(dirpath, name)
            copy_file(path, target / path.relative_to(source))


def immutable_lines(spec: InstallSpec) -> str:
    """install.bind_mounts persist on COS_PERSISTENT, ephemeral_mounts live in memory."""
    lines = [f"persist {path}" for path in spec.bind_mounts]
    lines += [f"overlay {path}" for path in spec.ephemeral_mounts]
    return "".join(f"{line}\n" for line in lines)


def write_system(devices: dict[str, Path], image_size: int, medium: Path, source: Path) -> None:
    with mounted(devices["recovery"], "rw") as recovery:
        for name, target in MEDIUM_FILES.items():
            copy_file(medium / name, recovery / target)
        copy_tree(medium / kit.KIT_DIR, recovery / kit.KIT_DIR)
    with mounted(devices["state"], "rw") as state:
        copy_file(medium / kit.KIT_DIR / kit.STATE_MENU, state / "boot" / "grub" / "grub.cfg")
        say(f"writing the system image ({image_size >> 20} MiB) from {source}")
        deploy_system(source, state / "cOS", image_size)


def write_oem(device: Path, spec: InstallSpec, config_text: str) -> None:
    with mounted(device, "rw") as oem:
        if config_text.strip():
            (oem / CONFIG_NAME).write_text(config_text)
            (oem / CONFIG_NAME).chmod(0o600)
        if lines := immutable_lines(spec):
            (oem / IMMUTABLE_CONF).write_text(lines)
        write_grubenv(oem / GRUBENV, {"extra_cmdline": spec.extra_cmdline})


def write_boot_loaders(device: Path, devices: dict[str, Path], layout: Layout, medium: Path) -> None:
    tools = medium / kit.KIT_DIR
    if "efi" in devices:
        with mounted(devices["efi"], "rw", fstype="vfat") as esp:
            copy_tree(tools / kit.ESP_DIR, esp)
    bios = next((p for p in layout.partitions if p.name == "bios"), None)
    if bios is not None:
        try:
            write_bios_boot(
                device,
                (tools / kit.BIOS_CORE).read_bytes(),
                (tools / kit.BIOS_BOOT).read_bytes(),
                bios.start,
                bios.size,
            )
        except BootSectorError as exc:
            raise NodeError(str(exc)) from exc


def install_trusted(
    spec: InstallSpec, config_text: str, device_name: str | None, medium: Path = TRUSTED_MEDIUM
) -> Path:
    """A Trusted Boot live system onto a disk: the files the build signed, copied (the ESP of
    the install kit, the verified image), COS_PERSISTENT left blank for the first boot to
    seal to this machine's TPM."""
    esp_kit = medium / kit.KIT_DIR / kit.ESP_DIR
    images = sorted((medium / "cOS").glob("system-*.img"))
    if not esp_kit.is_dir() or len(images) != 1:
        raise NodeError(
            f"{medium} has no install kit and system image: this live system cannot install itself",
            hint="boot a Trusted Boot ISO made by kairos-build",
        )
    image = images[0]
    uki = esp_kit / trusted.UKI_DIR / image.name.replace(".img", ".efi")
    device = pick_device(device_name or spec.device)
    size = disk_size(device.name)
    image_bytes = image.stat().st_size
    options = DiskOptions(
        firmware="uefi",
        disk_size=size,
        sizes=(("efi", TRUSTED_ESP), *spec.sizes),
        image_size=align_up(image_bytes * 11 // 10, 16 * MiB),
    )
    try:
        layout = plan_layout(options, image_bytes, image_bytes, seed=f"install/{size}")
    except InputError as exc:
        raise NodeError(
            f"{device} ({size / (1 << 30):.2f} GiB) is too small: {exc.message}",
            hint="use a larger disk or smaller install.partitions sizes",
        ) from exc
    say(f"installing to {device}: {layout.describe()}")
    devices = partition(device, layout, blank=("persistent",))
    with mounted(devices["recovery"], "rw") as recovery:
        say(f"writing {image.name} ({image_bytes >> 20} MiB) to COS_RECOVERY and COS_STATE")
        copy_file(image, recovery / "cOS" / image.name)
        copy_file(uki, recovery / trusted.RESET_KIT / uki.name)
        for role in ("active", "passive"):
            entry = esp_kit / trusted.ENTRIES_DIR / f"{role}.conf"
            copy_file(entry, recovery / trusted.RESET_KIT / entry.name)
    with mounted(devices["state"], "rw") as state:
        copy_file(image, state / "cOS" / image.name)
    write_oem(devices["oem"], spec, config_text)
    with mounted(devices["efi"], "rw", fstype="vfat") as esp:
        copy_tree(esp_kit, esp)
    os.sync()
    say(f"installed to {device}")
    return device


def install(
    spec: InstallSpec,
    config_text: str,
    device_name: str | None = None,
    medium: Path = LIVE_MEDIUM,
    source: Path = LIVE_ROOT,
) -> Path:
    """Install this live system; returns the disk it went to."""
    state = boot_state()
    if state != "livecd_boot":
        raise NodeError(
            f"install runs from the live system; this node booted as {state}",
            hint="boot the live ISO, or use upgrade/reset on an installed node",
        )
    if trusted.is_trusted():
        return install_trusted(spec, config_text, device_name)
    for needed in (medium / kit.KIT_DIR, medium / "rootfs.squashfs", source):
        if not needed.exists():
            raise NodeError(
                f"{needed} is missing: this live system cannot install itself",
                hint="boot an ISO made by kairos-build",
            )
    device = pick_device(device_name or spec.device)
    recovery_bytes = sum((medium / name).stat().st_size for name in MEDIUM_FILES)
    say(f"measuring {source}")
    layout = plan(spec, device, tree_bytes(source), recovery_bytes)
    say(f"installing to {device}: {layout.describe()}")
    devices = partition(device, layout)
    write_system(devices, layout.image_size, medium, source)
    write_oem(devices["oem"], spec, config_text)
    write_boot_loaders(device, devices, layout, medium)
    os.sync()
    say(f"installed to {device}")
    return device


def finish(reboot: bool, poweroff: bool) -> None:
    """What the config asks once the work is done: power off wins over reboot."""
    if poweroff or reboot:
        say("powering off" if poweroff else "rebooting")
        subprocess.run(["systemctl", "poweroff" if poweroff else "reboot"], check=False)
