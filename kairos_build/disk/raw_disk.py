"""The raw GPT disk with the Kairos partition layout, built without loop devices or mounts: the
one disk every disk format is made from (the export context makes it once per build, from
these building blocks; they take plain inputs and know nothing of formats).

Every partition is made in place inside one sparse file: ext4 with `mkfs.ext4 -d -E offset=`,
the ESP with `mkfs.vfat --offset` + mtools, grub's BIOS core written into the BIOS boot
partition. The system boots `cOS/active.img` from COS_STATE through our kairos-immutable
initramfs module; COS_RECOVERY holds the shared squashfs as `cOS/recovery.squashfs`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kairos_build.core.flavors import SecureBoot
from kairos_build.core.log import log, step
from kairos_build.core.reproducible import clamp_times
from kairos_build.core.templates import render
from kairos_build.core.tools import run
from kairos_build.disk import kit
from kairos_build.disk.biosboot import bios_core_image, write_bios_images
from kairos_build.disk.efi import esp_files
from kairos_build.disk.ext4 import make_ext4
from kairos_build.disk.fat import make_fat_in_disk
from kairos_build.disk.filesystems import tree_bytes
from kairos_build.disk.gpt import create_disk
from kairos_build.disk.grub import grub_dir, grub_quote
from kairos_build.disk.layout import DiskOptions, Layout, Partition, plan_layout, stable_uuid

# What making the disk drives on the host: every disk format needs these.
RAW_DISK_TOOLS: tuple[str, ...] = (
    "sfdisk",
    "mkfs.ext4",
    "debugfs",
    "dumpe2fs",
    "mkfs.vfat",
    "mmd",
    "mcopy",
    "mksquashfs",
    "grub-mkimage",
)

STATE_LABEL = "COS_STATE"
CONSOLES = ("console=tty1", "console=ttyS0,115200")  # ttyS0 last: it becomes /dev/console


def state_cmdline(label: str, extra: tuple[str, ...]) -> str:
    return " ".join([f"root=LABEL={label}", "ro", *CONSOLES, *(grub_quote(word) for word in extra)])


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link when source and target share a filesystem (cache and work dir do), else a
    copy that keeps the holes of a sparse file (a disk image is mostly holes)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        run(["cp", "--sparse=always", "--reflink=auto", str(source), str(target)])


def fs_uuid(seed: str, label: str) -> str:
    return stable_uuid(seed, f"fs/{label}")


def volume_id(seed: str) -> str:
    return fs_uuid(seed, "COS_GRUB").replace("-", "")[:8]


def stage(workdir: Path, name: str) -> Path:
    folder = workdir / f"stage-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def write_ext4(disk: Path, part: Partition, seed: str, source: Path | None, epoch: int) -> None:
    assert part.label is not None
    with step(f"writing {part.label} ({part.size >> 20} MiB ext4)"):
        if source is not None:
            clamp_times(source, epoch)
        make_ext4(
            disk,
            part.size,
            part.label,
            fs_uuid(seed, part.label),
            source=source,
            offset=part.start,
            epoch=epoch,
        )


def state_menu(pretty_name: str, extra: tuple[str, ...]) -> str:
    """COS_STATE's /boot/grub/grub.cfg: the active, passive, recovery and reset entries."""
    return render(
        "grub-disk.cfg.j2",
        timeout=3,
        title=f"Kairos {pretty_name}",
        state_cmdline=state_cmdline(STATE_LABEL, extra),
        recovery_cmdline=state_cmdline("COS_RECOVERY", extra),
    )


def install_kit(rootfs: Path, secure_boot: SecureBoot | None, menu: str, work: Path) -> dict[str, Path]:
    """Kit path -> host file: the boot loaders and menu of an installed disk, the same this
    module writes into a raw disk, for kairos-agent to lay down (disk/kit.py names them)."""
    work.mkdir(exist_ok=True)
    loaders = esp_files(rootfs, secure_boot, STATE_LABEL, work, cd=False)
    files = {f"{kit.ESP_DIR}/{path}": source for path, source in loaders.items()}
    modules = grub_dir(rootfs, "i386-pc")
    files[kit.BIOS_CORE] = bios_core_image(STATE_LABEL, work, modules)
    files[kit.BIOS_BOOT] = modules / "boot.img"
    menu_file = work / "grub.cfg"
    menu_file.write_text(menu)
    files[kit.STATE_MENU] = menu_file
    return files


@dataclass(frozen=True)
class RawDiskParts:
    """What goes into the partitions: the system image, the recovery squashfs with its kernel
    and initrd, the install kit (install_kit) and the node's cloud-config."""

    active: Path
    squashfs: Path
    kernel: Path
    initrd: Path
    kit: dict[str, Path]
    cloud_config: Path | None


def measure_rootfs(rootfs: Path) -> int:
    with step("measuring the rootfs"):
        return tree_bytes(rootfs)


def plan_raw_disk(options: DiskOptions, rootfs_bytes: int, recovery: tuple[Path, ...], seed: str) -> Layout:
    """The layout for a rootfs of `rootfs_bytes` and the files COS_RECOVERY holds (its
    squashfs, kernel and initrd)."""
    recovery_bytes = sum(path.stat().st_size for path in recovery)
    layout = plan_layout(options, rootfs_bytes, recovery_bytes, seed)
    log.info("  layout: %s; disk %d MiB", layout.describe(), layout.disk_size >> 20)
    return layout


def write_raw_disk(
    output: Path, layout: Layout, parts: RawDiskParts, work: Path, seed: str, epoch: int
) -> None:
    """Write the whole disk image of `layout` to `output`."""
    create_disk(output, layout)
    partitions = {p.name: p for p in layout.partitions}
    # The boot loaders and menu, made once: written to COS_GRUB, the BIOS boot partition and
    # COS_STATE here, and kept on COS_RECOVERY for kairos-agent.
    loaders = parts.kit

    state = stage(work, "state")
    link_or_copy(parts.active, state / "cOS" / "active.img")
    (state / "boot" / "grub").mkdir(parents=True)
    shutil.copyfile(loaders[kit.STATE_MENU], state / "boot" / "grub" / "grub.cfg")
    write_ext4(output, partitions["state"], seed, state, epoch)

    recovery = stage(work, "recovery")
    link_or_copy(parts.squashfs, recovery / "cOS" / "recovery.squashfs")
    link_or_copy(parts.kernel, recovery / "boot" / "vmlinuz")
    link_or_copy(parts.initrd, recovery / "boot" / "initrd")
    # Copies, not links: some come from the cached rootfs, and the stage's times get clamped.
    for path, source in loaders.items():
        (recovery / kit.KIT_DIR / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, recovery / kit.KIT_DIR / path)
    write_ext4(output, partitions["recovery"], seed, recovery, epoch)

    oem = stage(work, "oem")
    if parts.cloud_config is not None:
        shutil.copyfile(parts.cloud_config, oem / "90_custom.yaml")
    write_ext4(output, partitions["oem"], seed, oem, epoch)
    write_ext4(output, partitions["persistent"], seed, None, epoch)

    if "efi" in partitions:
        with step("writing COS_GRUB (the EFI boot loaders)"):
            esp = {
                path.removeprefix(f"{kit.ESP_DIR}/"): source
                for path, source in loaders.items()
                if path.startswith(f"{kit.ESP_DIR}/")
            }
            efi = partitions["efi"]
            make_fat_in_disk(output, efi.start, efi.size, esp, "COS_GRUB", volume_id(seed), epoch)
    if "bios" in partitions:
        with step("writing grub for BIOS"):
            write_bios_images(output, partitions["bios"], loaders[kit.BIOS_CORE], loaders[kit.BIOS_BOOT])
