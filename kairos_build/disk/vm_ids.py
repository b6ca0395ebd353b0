"""The ids qemu-img makes up for vmdk and vhd, replaced by ones derived from the build.

qemu-img gives a vmdk a random content id (CID) and names the file it wrote (our temporary
name) in the embedded descriptor; a vhd gets a random UUID and the wall clock in its footer.
Each is rewritten in place, so the same raw disk gives the same vmdk and vhd on any day.
"""

from __future__ import annotations

import re
import struct
import uuid
from pathlib import Path

_SECTOR = 512
_VMDK_MAGIC = b"KDMV"
# VHD dates count from 2000-01-01T00:00:00Z.
_VHD_EPOCH = 946684800


def pin_vmdk(path: Path, cid: int, file_name: str) -> None:
    """Set the descriptor's CID and its extent's file name (`file_name`, the published one)."""
    with path.open("r+b") as disk:
        header = disk.read(_SECTOR)
        if header[:4] != _VMDK_MAGIC:
            raise ValueError(f"{path} is not a sparse vmdk")
        offset, sectors = struct.unpack_from("<QQ", header, 28)
        disk.seek(offset * _SECTOR)
        area = disk.read(sectors * _SECTOR)
        text = area.rstrip(b"\0").decode()
        text = re.sub(r"(?m)^CID=[0-9a-fA-F]+$", f"CID={cid:08x}", text)
        text = re.sub(r'(?m)^(RW \d+ \w+ )".*"$', lambda m: f'{m.group(1)}"{file_name}"', text)
        data = text.encode()
        if len(data) > len(area):
            raise ValueError(f"the vmdk descriptor of {path} has no room for {file_name!r}")
        disk.seek(offset * _SECTOR)
        disk.write(data.ljust(len(area), b"\0"))


def pin_vhd(path: Path, epoch: int, disk_id: uuid.UUID) -> None:
    """Set a fixed vhd's footer (its last sector) date to `epoch` and UUID to `disk_id`, then
    its checksum: the ones' complement of the sum of its bytes."""
    with path.open("r+b") as disk:
        place = disk.seek(0, 2) - _SECTOR
        disk.seek(place)
        footer = bytearray(disk.read(_SECTOR))
        if footer[:8] != b"conectix":
            raise ValueError(f"{path} has no vhd footer")
        struct.pack_into(">I", footer, 24, max(0, epoch - _VHD_EPOCH))
        footer[68:84] = disk_id.bytes
        struct.pack_into(">I", footer, 64, 0)
        struct.pack_into(">I", footer, 64, ~sum(footer) & 0xFFFFFFFF)
        disk.seek(place)
        disk.write(footer)
