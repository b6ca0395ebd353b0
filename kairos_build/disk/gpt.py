"""Write a GPT (protective MBR, primary and backup tables) into a disk file with sfdisk.

sfdisk works on a regular file without loop devices; every identifier comes from the layout
(derived from the inputs), so the same inputs give the same partition table.
"""

from __future__ import annotations

import os
from pathlib import Path

from kairos_build.disk.layout import SECTOR, Layout
from kairos_build.tools import run

_PMBR_STATUS = 446  # status byte of the first MBR partition entry (the 0xEE protective one)


def sfdisk_script(layout: Layout) -> str:
    lines = ["label: gpt", f"label-id: {layout.disk_guid.upper()}", "unit: sectors",
             "first-lba: 2048", "sector-size: 512"]
    for part in layout.partitions:
        lines.append(f"start={part.start // SECTOR}, size={part.size // SECTOR}, "
                     f"type={part.type_guid}, uuid={part.guid.upper()}, name=\"{part.name}\"")
    return "\n".join(lines) + "\n"


def create_disk(path: Path, layout: Layout) -> None:
    """A sparse file of the disk's size with the partition table written into it."""
    with path.open("wb") as handle:
        handle.truncate(layout.disk_size)
    write_partition_table(path, sfdisk_script(layout), wipe="always")


def write_partition_table(path: Path, script: str, wipe: str) -> None:
    """Run an sfdisk script against a file (never a device of the host: no reread, no tell)."""
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", wipe, str(path)],
        input_bytes=script.encode())


def mark_pmbr_bootable(path: Path) -> None:
    """Some BIOSes only boot a GPT disk whose protective MBR entry is marked active."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"\x80", _PMBR_STATUS)
    finally:
        os.close(fd)
