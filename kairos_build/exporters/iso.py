"""Live ISO: BIOS and UEFI El Torito, kernel + initrd + squashfs, written with pycdlib."""

from __future__ import annotations

import os
from pathlib import Path

import pycdlib

from kairos_build import rootfs
from kairos_build.disk.fat import make_fat_image
from kairos_build.disk.grub import make_grub_image
from kairos_build.errors import InputError
from kairos_build.exporters.base import ExportContext
from kairos_build.log import step
from kairos_build.templates import render

LABEL = "COS_LIVE"
MiB = 1 << 20


def live_cmdline(label: str, extra: tuple[str, ...] = ()) -> str:
    """dracut dmsquash-live arguments; ttyS0 last so it is /dev/console (logs, login)."""
    return " ".join([
        f"root=live:CDLABEL={label}", "rd.live.dir=/", "rd.live.squashimg=rootfs.squashfs",
        "rd.live.overlay.overlayfs=1", "console=tty1", "console=ttyS0,115200", *extra,
    ])


def boot_file(root: Path, name: str) -> Path:
    """/boot/vmlinuz or /boot/initrd of the converted rootfs, resolved inside it."""
    path = rootfs.resolve_in(root, f"boot/{name}")
    if not path.is_file():
        raise InputError(f"the converted rootfs has no /boot/{name}",
                         hint="was it converted? kairos-build links the kernel and initrd there")
    return path


class _Iso:
    """A thin layer over pycdlib: ISO9660 names from Rock Ridge/Joliet paths."""

    def __init__(self) -> None:
        self.iso = pycdlib.PyCdlib()
        self.iso.new(interchange_level=3, vol_ident=LABEL, sys_ident="LINUX",
                     app_ident_str="kairos-build", rock_ridge="1.09", joliet=3)

    @staticmethod
    def iso_name(path: str) -> str:
        return path.upper().replace("-", "_")

    def add_dir(self, path: str) -> None:
        self.iso.add_directory(self.iso_name(path), rr_name=path.rsplit("/", 1)[-1],
                               joliet_path=path)

    def add_file(self, source: Path, path: str) -> None:
        name = self.iso_name(path)
        if "." not in name.rsplit("/", 1)[-1]:
            name += "."
        self.iso.add_file(str(source), iso_path=f"{name};1", rr_name=path.rsplit("/", 1)[-1],
                          joliet_path=path)


class IsoExporter:
    name = "iso"
    extension = "iso"
    boot_mode = "secureboot"  # grub on BIOS and UEFI, systemd or openrc, an EFI-stub kernel
    tools: tuple[str, ...] = ("mksquashfs", "grub-mkimage", "mkfs.vfat", "mmd", "mcopy")
    files: tuple[str, ...] = ("/usr/lib/grub/i386-pc/cdboot.img", "/usr/lib/grub/x86_64-efi/linux.mod")

    def export(self, context: ExportContext, output: Path) -> None:
        config = context.config
        work = context.workdir
        kernel = boot_file(context.rootfs, "vmlinuz")
        initrd = boot_file(context.rootfs, "initrd")
        squashfs = context.squashfs()

        grub_cfg = work / "grub.cfg"
        grub_cfg.write_text(render(
            "grub-live.cfg.j2", timeout=3, title=f"Kairos {config.flavor.pretty_name}",
            cmdline=live_cmdline(LABEL, config.extra_kernel_args)))
        with step("making the BIOS and UEFI boot images"):
            bios_img = work / "bios.img"
            make_grub_image("i386-pc", bios_img, LABEL, work)
            efi_binary = work / "BOOTX64.EFI"
            make_grub_image("x86_64-efi", efi_binary, LABEL, work)
            esp = work / "uefi.img"
            # grub.cfg in the ESP too: firmware booting the ESP directly (USB) reads that one.
            make_fat_image(esp, {"EFI/BOOT/BOOTX64.EFI": efi_binary,
                                 "EFI/BOOT/grub.cfg": grub_cfg}, label="COS_GRUB")

        with step("writing the ISO"):
            iso = _Iso()
            for folder in ("/boot", "/boot/grub"):
                iso.add_dir(folder)
            iso.add_file(grub_cfg, "/boot/grub/grub.cfg")
            iso.add_file(bios_img, "/boot/grub/bios.img")
            iso.add_file(esp, "/boot/uefi.img")
            iso.add_file(kernel, "/boot/kernel")
            iso.add_file(initrd, "/boot/initrd")
            iso.add_file(squashfs, "/rootfs.squashfs")
            if config.cloud_config is not None:
                # Where Kairos looks for an unattended-install config on the live medium.
                iso.add_file(config.cloud_config, "/config.yaml")
            # BIOS: grub's cdboot needs the boot info table and loads 4 sectors to start.
            iso.iso.add_eltorito("/BOOT/GRUB/BIOS.IMG;1", bootcatfile="/BOOT/BOOT.CAT;1",
                                 rr_bootcatname="boot.cat", joliet_bootcatfile="/boot/boot.cat",
                                 boot_load_size=4, boot_info_table=True)
            iso.iso.add_eltorito("/BOOT/UEFI.IMG;1", efi=True)
            try:
                iso.iso.write(str(output))
            finally:
                iso.iso.close()
            pad_tail(output)


def pad_tail(path: Path) -> None:
    """Zero-pad the ISO to a whole MiB plus one.

    pycdlib ends the image right after the last file. GRUB reads a CD in cached chunks that
    run past the end of such an image and then gets garbage for the last file (seen: grub.cfg
    in the final block read as binary and the boot fell to a grub prompt); mkisofs pads by
    300 KiB for the same reason.
    """
    size = path.stat().st_size
    os.truncate(path, (size // MiB + 2) * MiB)
