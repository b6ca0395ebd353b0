"""The ISO9660 medium (Rock Ridge + Joliet, El Torito for BIOS and UEFI), written with pycdlib,
and what makes it boot from a disk too: the building blocks of the ISO exporter and of
`inject`, which rewrites an ISO it did not make."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from kairos_build.core.errors import InputError
from kairos_build.core.reproducible import frozen_pycdlib_clock
from kairos_build.disk.isohybrid import make_hybrid

LABEL = "COS_LIVE"  # the live medium's volume label: its kernel command line finds it by this
MiB = 1 << 20


class IsoTree:
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


# The MBR code of the hybrid ISO, kept on it so `inject` can make the disk structures again
# from the image's own grub (kairos_build/pipelines/inject.py has no rootfs).
HYBRID_MBR = "/BOOT/GRUB/BOOT_HYBRID.IMG;1"


def write_iso(files: dict[str, Path], output: Path, epoch: int = 0, bios: bool = True) -> None:
    """The ISO9660 filesystem (Rock Ridge + Joliet) with BIOS (unless `bios` is False) and
    UEFI El Torito entries, every date in it `epoch` (UTC)."""
    with frozen_pycdlib_clock(epoch):
        _write_iso(files, output, bios)


def _write_iso(files: dict[str, Path], output: Path, bios: bool) -> None:
    iso = IsoTree()
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
