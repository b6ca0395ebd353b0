"""Live ISO: BIOS and UEFI El Torito, kernel + initrd + squashfs, written with pycdlib."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from kairos_build.core.errors import InputError
from kairos_build.core.log import step
from kairos_build.core.reproducible import frozen_pycdlib_clock
from kairos_build.core.templates import render
from kairos_build.disk import kit
from kairos_build.disk.efi import esp_files
from kairos_build.disk.fat import make_fat_image
from kairos_build.disk.grub import grub_dir, grub_quote, make_grub_image
from kairos_build.disk.isohybrid import append_esp, make_hybrid
from kairos_build.disk.raw_disk import install_kit
from kairos_build.exporters.base import ExportContext

LABEL = "COS_LIVE"
MiB = 1 << 20


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


class _Iso:
    """A thin layer over pycdlib: real names in Rock Ridge and Joliet, and ISO9660 names made
    from them (upper case, [A-Z0-9_], short, unique within their folder)."""

    def __init__(self) -> None:
        self.iso = pycdlib.PyCdlib()
        self.iso.new(
            interchange_level=3,
            vol_ident=LABEL,
            sys_ident="LINUX",
            app_ident_str="kairos-build",
            rock_ridge="1.09",
            joliet=3,
        )
        self.names: dict[str, str] = {"": ""}  # path -> ISO9660 path
        self.used: dict[str, set[str]] = {}  # ISO9660 folder -> names taken in it

    def _iso_path(self, path: str, folder: bool) -> str:
        parent, _, name = path.rpartition("/")
        iso_parent = self.names[parent]
        stem, dot, ext = name.rpartition(".") if "." in name and not folder else (name, "", "")
        stem = _NOT_D_CHARS.sub("_", stem.upper())[:20] or "_"
        ext = _NOT_D_CHARS.sub("_", ext.upper())[:8]
        taken = self.used.setdefault(iso_parent, set())
        candidate, number = stem, 1
        while (candidate if folder else f"{candidate}.{ext}") in taken:
            number += 1
            candidate = f"{stem[: 20 - len(str(number)) - 1]}_{number}"
        leaf = candidate if folder else f"{candidate}.{ext}"
        taken.add(leaf)
        self.names[path] = f"{iso_parent}/{leaf}"
        return self.names[path]

    def add_dir(self, path: str) -> None:
        self.iso.add_directory(
            self._iso_path(path, folder=True), rr_name=path.rsplit("/", 1)[-1], joliet_path=path
        )

    def add_file(self, source: Path, path: str) -> None:
        name = path.rsplit("/", 1)[-1]
        if len(name) > 64:
            raise InputError(f"{path}: names on the ISO are limited to 64 characters (Joliet)")
        self.iso.add_file(
            str(source), iso_path=f"{self._iso_path(path, folder=False)};1", rr_name=name, joliet_path=path
        )


_NOT_D_CHARS = re.compile(r"[^A-Z0-9_]")


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
# The MBR code of the hybrid ISO, kept on it so `inject` can make the disk structures again
# from the image's own grub (kairos_build/pipelines/inject.py has no rootfs).
HYBRID_MBR = "/BOOT/GRUB/BOOT_HYBRID.IMG;1"


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
            files.update({f"/{kit.KIT_DIR}/{path}": source for path, source in install_kit(context).items()})
            if config.cloud_config is not None:
                # Where Kairos looks for a config on the live medium.
                files["/config.yaml"] = config.cloud_config
            write_iso(files, output, context.epoch)
        with step("making it bootable from a disk too (MBR, GPT, appended ESP)"):
            hybridize(output, context.rootfs_key)


def export_trusted(context: ExportContext, output: Path) -> None:
    """The Trusted Boot live ISO: UEFI only (kairos_build.trusted.iso)."""
    from kairos_build.trusted.iso import trusted_iso_files  # needs the image's ukify
    from kairos_build.trusted.keys import load_keys

    assert context.config.keys is not None  # the build refuses trusted without keys
    keys = load_keys(context.config.keys, context.config.cache_dir)
    files = trusted_iso_files(context, keys, LABEL)
    with step("writing the ISO (UEFI only)"):
        write_iso(files, output, context.epoch, bios=False)
    with step("making it bootable from a disk too (GPT, appended ESP)"):
        append_esp(output, files["/boot/uefi.img"], context.rootfs_key)


def write_iso(files: dict[str, Path], output: Path, epoch: int = 0, bios: bool = True) -> None:
    """The ISO9660 filesystem (Rock Ridge + Joliet) with BIOS (unless `bios` is False) and
    UEFI El Torito entries, every date in it `epoch` (UTC)."""
    with frozen_pycdlib_clock(epoch):
        _write_iso(files, output, bios)


def _write_iso(files: dict[str, Path], output: Path, bios: bool) -> None:
    iso = _Iso()
    folders = {path[:cut] for path in files for cut in range(1, len(path)) if path[cut] == "/"}
    for folder in sorted(folders):
        iso.add_dir(folder)
    for path in sorted(files):
        iso.add_file(files[path], path)
    if bios:
        # BIOS: grub's cdboot needs the boot info table and loads 4 sectors to start.
        iso.iso.add_eltorito(
            "/BOOT/GRUB/BIOS.IMG;1",
            bootcatfile="/BOOT/BOOT.CAT;1",
            rr_bootcatname="boot.cat",
            joliet_bootcatfile="/boot/boot.cat",
            boot_load_size=4,
            boot_info_table=True,
        )
        iso.iso.add_eltorito("/BOOT/UEFI.IMG;1", efi=True)
    else:
        # The ESP holds a UKI: far more than the 65535 sectors El Torito's count can say. A
        # count below 2 has UEFI firmware (edk2's ElTorito.c) take the image from its start
        # to the end of the medium; the FAT inside says its own size.
        iso.iso.add_eltorito(
            "/BOOT/UEFI.IMG;1",
            bootcatfile="/BOOT/BOOT.CAT;1",
            rr_bootcatname="boot.cat",
            joliet_bootcatfile="/boot/boot.cat",
            efi=True,
            boot_load_size=1,
            platform_id=0xEF,
        )
    try:
        iso.iso.write(str(output))
    finally:
        iso.iso.close()
    pad_tail(output)


def hybridize(iso_path: Path, seed: str) -> None:
    """Read where the ISO's boot images are and add the disk boot structures."""
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        bios = iso.get_record(iso_path="/BOOT/GRUB/BIOS.IMG;1")
        bios_lba, bios_size = bios.extent_location(), bios.get_data_length()
        esp = iso_path.with_name(iso_path.name + ".esp")
        with esp.open("wb") as handle:
            iso.get_file_from_iso_fp(handle, iso_path="/BOOT/UEFI.IMG;1")
        mbr_code = _read_small(iso, HYBRID_MBR)
    finally:
        iso.close()
    try:
        make_hybrid(iso_path, bios_lba, bios_size, esp, seed, mbr_code)
    finally:
        esp.unlink(missing_ok=True)


def _read_small(iso: pycdlib.PyCdlib, iso_path: str, limit: int = 64 << 10) -> bytes | None:
    """A small file of the ISO, or None when it has none (an ISO of an older kairos-build) or
    one larger than `limit` (`inject` reads ISOs it did not make)."""
    buffer = io.BytesIO()
    try:
        if iso.get_record(iso_path=iso_path).get_data_length() > limit:
            return None
        iso.get_file_from_iso_fp(buffer, iso_path=iso_path)
    except PyCdlibException:
        return None
    return buffer.getvalue()


def pad_tail(path: Path) -> None:
    """Zero-pad the ISO to a whole MiB plus one.

    pycdlib ends the image right after the last file. GRUB reads a CD in cached chunks that
    run past the end of such an image and then gets garbage for the last file (seen: grub.cfg
    in the final block read as binary and the boot fell to a grub prompt); mkisofs pads by
    300 KiB for the same reason.
    """
    size = path.stat().st_size
    os.truncate(path, (size // MiB + 2) * MiB)
