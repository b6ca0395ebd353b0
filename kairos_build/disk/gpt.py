"""Write a GPT (protective MBR, primary and backup tables) into a disk file with sfdisk.

sfdisk works on a regular file without loop devices; every identifier comes from the layout
(derived from the inputs), so the same inputs give the same partition table.
"""

from __future__ import annotations

from pathlib import Path

from kairos_build.core.tools import run
from kairos_build.disk.layout import Layout, sfdisk_script


def create_disk(path: Path, layout: Layout) -> None:
    """A sparse file of the disk's size with the partition table written into it."""
    with path.open("wb") as handle:
        handle.truncate(layout.disk_size)
    write_partition_table(path, sfdisk_script(layout), wipe="always")


def write_partition_table(path: Path, script: str, wipe: str) -> None:
    """Run an sfdisk script against a file (never a device of the host: no reread, no tell)."""
    run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", wipe, str(path)],
        input_bytes=script.encode(),
    )
