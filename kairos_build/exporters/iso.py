"""Live ISO: BIOS and UEFI El Torito, kernel + initrd + squashfs, written with pycdlib."""

from __future__ import annotations

import os
from pathlib import Path

from kairos_build.core.errors import InputError
from kairos_build.core.log import step
from kairos_build.core.templates import render
from kairos_build.disk import kit
from kairos_build.disk.efi import esp_files
from kairos_build.disk.fat import make_fat_image
from kairos_build.disk.grub import grub_dir, grub_quote, make_grub_image
from kairos_build.disk.iso9660 import LABEL, hybridize, write_iso
from kairos_build.disk.isohybrid import append_esp
from kairos_build.exporters.base import ExportContext
from kairos_build.trusted.disk import EspInputs, image_path
from kairos_build.trusted.iso import live_esp


def live_cmdline(label: str, extra: tuple[str, ...] = ()) -> str:
    """dracut dmsquash-live arguments; ttyS0 last so it is /dev/console (logs, login)."""
    return " ".join(
        [
            f"root=live:CDLABEL={label}",
            "rd.live.dir=/",
            "rd.live.squashimg=rootfs.squashfs",
            "rd.live.overlay.overlayfs=1",
            "console=tty1",
            "console=ttyS0,115200",
            *(grub_quote(word) for word in extra),
        ]
    )


# Paths the ISO itself uses: an --overlay-iso tree may not replace them.
RESERVED = frozenset(
    {
        "/boot/kernel",
        "/boot/initrd",
        "/boot/uefi.img",
        "/boot/boot.cat",
        "/boot/grub/grub.cfg",
        "/boot/grub/bios.img",
        "/boot/grub/boot_hybrid.img",
        "/rootfs.squashfs",
        "/config.yaml",
        "/.disk/info",
    }
)


def overlay_files(directory: Path) -> dict[str, Path]:
    """ISO path -> host file for every regular file under `directory` (links not followed)."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            source = Path(dirpath, name)
            if source.is_symlink() or not source.is_file():
                raise InputError(
                    f"--overlay-iso: {source} is not a regular file",
                    hint="an ISO overlay holds plain files and folders only",
                )
            path = "/" + source.relative_to(directory).as_posix()
            if path in RESERVED:
                raise InputError(
                    f"--overlay-iso: {path} would replace a file the ISO boots with",
                    hint="rename it, or use --cloud-config for /config.yaml",
                )
            found[path] = source
    return found


class IsoExporter:
    """Build a live ISO (BIOS + UEFI) from a base."""

    name = "iso"
    extension = "iso"
    boot_mode = "secureboot"  # grub on BIOS and UEFI, systemd or openrc, an EFI-stub kernel
    trusted = True  # --boot-mode trusted: UEFI only, systemd-boot and a live UKI (trusted/iso.py)
    tools: tuple[str, ...] = ("mksquashfs", "grub-mkimage", "mkfs.vfat", "mmd", "mcopy", "sfdisk")
    # The boot loaders come from the image (the host's grub only for an image without one).
    files: tuple[str, ...] = ()

    def export(self, context: ExportContext, output: Path) -> None:
        config = context.config
        if config.boot_mode == "trusted":
            export_trusted(context, output)
            return
        work = context.workdir
        kernel = context.kernel()
        initrd = context.initrd()
        extra = overlay_files(config.overlay_iso) if config.overlay_iso else {}
        squashfs = context.squashfs()

        grub_cfg = work / "grub.cfg"
        grub_cfg.write_text(
            render(
                "grub-live.cfg.j2",
                timeout=3,
                title=f"Kairos {config.flavor.pretty_name}",
                cmdline=live_cmdline(LABEL, config.extra_kernel_args),
            )
        )
        with step("making the BIOS and UEFI boot images"):
            bios_modules = grub_dir(context.rootfs, "i386-pc")
            bios_img = work / "bios.img"
            make_grub_image("i386-pc", bios_img, LABEL, work, bios_modules)
            esp = work / "uefi.img"
            # The same ESP boots the CD (El Torito) and the USB stick (the appended partition).
            make_fat_image(
                esp,
                esp_files(context.rootfs, config.flavor.secure_boot, LABEL, work, cd=True),
                label="COS_GRUB",
                epoch=context.epoch,
            )
            # Debian's signed CD grub finds the medium by this file when its prefix is missing.
            disk_info = work / "disk-info"
            disk_info.write_text(f"Kairos {config.flavor.pretty_name} {config.version} live\n")

        with step("writing the ISO"):
            files = {
                "/boot/grub/grub.cfg": grub_cfg,
                "/boot/grub/bios.img": bios_img,
                "/boot/grub/boot_hybrid.img": bios_modules / "boot_hybrid.img",
                "/.disk/info": disk_info,
                "/boot/uefi.img": esp,
                "/boot/kernel": kernel,
                "/boot/initrd": initrd,
                "/rootfs.squashfs": squashfs,
                **extra,
            }
            # What kairos-agent install lays down: the installed disk's boot loaders and menu.
            files.update({f"/{kit.KIT_DIR}/{path}": source for path, source in context.install_kit().items()})
            if config.cloud_config is not None:
                # Where Kairos looks for a config on the live medium.
                files["/config.yaml"] = config.cloud_config
            write_iso(files, output, context.epoch)
        with step("making it bootable from a disk too (MBR, GPT, appended ESP)"):
            hybridize(output, context.rootfs_key)


def export_trusted(context: ExportContext, output: Path) -> None:
    """The Trusted Boot live ISO: UEFI only, systemd-boot and a signed live UKI on its ESP, the
    verified root image on the ISO, the installed disk's ESP as the install kit (trusted/iso.py)."""
    config = context.config
    keys, verity = context.signing_keys(), context.verity_image()
    inputs = EspInputs(context.rootfs, config.flavor.pretty_name, config.version, config.extra_kernel_args)
    live = live_esp(
        inputs,
        keys,
        verity,
        LABEL,
        config.cloud_config is not None,
        context.workdir / "trusted-live",
        context.epoch,
    )
    files = {"/boot/uefi.img": live, image_path(verity): verity.path}
    # What kairos-agent install lays down: an installed disk's ESP, made by the same code.
    files.update(
        {
            f"/{kit.KIT_DIR}/{kit.ESP_DIR}/{path}": source
            for path, source in context.trusted_esp_files().items()
        }
    )
    if config.cloud_config is not None:
        files["/config.yaml"] = config.cloud_config
    with step("writing the ISO (UEFI only)"):
        write_iso(files, output, context.epoch, bios=False)
    with step("making it bootable from a disk too (GPT, appended ESP)"):
        append_esp(output, files["/boot/uefi.img"], context.rootfs_key)
