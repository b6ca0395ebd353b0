"""`kairos-build inject`: put a new cloud-config into a built ISO without rebuilding it.

pycdlib reads the ISO, swaps /config.yaml and writes the filesystem anew (the squashfs and
every other file are copied byte for byte); the disk boot structures (MBR, GPT, appended
ESP) are then made again for the new layout. Seconds, not a rebuild.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from kairos_build.config.cloudconfig import validate_cloud_config
from kairos_build.core.errors import InputError
from kairos_build.disk.iso9660 import LABEL, hybridize, pad_tail
from kairos_build.publish.files import discard, partial_path, publish_file

CONFIG_ISO_PATH = "/CONFIG.YAML;1"


def inject_cloud_config(iso_path: Path, cloud_config: Path, output: Path | None = None) -> Path:
    """Write `iso_path` with `cloud_config` as its /config.yaml to `output` (default: in
    place). Written under a temporary name and renamed, with its .sha256 beside it."""
    if not iso_path.is_file():
        raise InputError(f"{iso_path} does not exist")
    cloud_config = validate_cloud_config(cloud_config)
    target = output or iso_path
    partial = partial_path(target)
    iso = _open(iso_path)
    try:
        try:
            if _has(iso, CONFIG_ISO_PATH):
                iso.rm_file(iso_path=CONFIG_ISO_PATH, rr_name="config.yaml", joliet_path="/config.yaml")
            iso.add_file(
                str(cloud_config), iso_path=CONFIG_ISO_PATH, rr_name="config.yaml", joliet_path="/config.yaml"
            )
            iso.write(str(partial))
        finally:
            iso.close()
        pad_tail(partial)
        seed = hashlib.sha256(cloud_config.read_bytes()).hexdigest() + target.name
        hybridize(partial, seed)
        publish_file("iso", partial, target)
    except BaseException:
        discard(partial)
        raise
    return target


def _has(iso: pycdlib.PyCdlib, iso_path: str) -> bool:
    try:
        iso.get_record(iso_path=iso_path)
    except PyCdlibException:
        return False
    return True


def _open(path: Path) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except (PyCdlibException, OSError) as exc:
        raise InputError(f"{path} is not an ISO image kairos-build can read: {exc}") from exc
    volume = iso.pvd.volume_identifier.decode(errors="replace").strip()
    if volume != LABEL or not _has(iso, "/BOOT/GRUB/BIOS.IMG;1"):
        iso.close()
        raise InputError(
            f"{path} is not a Kairos live ISO (volume {volume!r})",
            hint="inject works on ISOs made by kairos-build iso",
        )
    return iso
