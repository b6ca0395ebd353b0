"""FAT filesystems from files, with mtools: no loop device, no mount.

Either a standalone image (the ISO's ESP) or written straight into a disk file at a
partition's offset (the disk's COS_GRUB).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kairos_build.core.reproducible import tool_env
from kairos_build.core.tools import run

_MiB = 1 << 20
_SECTOR = 512
# mkfs.fat (dosfstools 4.2) dates the volume label entry with the wall clock and does not
# read SOURCE_DATE_EPOCH; --invariant makes it a constant date (our -i volume id still wins).
_INVARIANT = ("--invariant",)


def make_fat_image(
    output: Path,
    files: Mapping[str, Path],
    label: str,
    min_size: int = 2 * _MiB,
    volume_id: str = "4b41524f",
    epoch: int = 0,
) -> None:
    """Write a FAT image at `output` holding `files` (image path -> host file).

    The size is what the files need plus room for FAT structures, rounded up to a MiB.
    """
    payload = sum(src.stat().st_size for src in files.values())
    size = max(min_size, ((payload * 11 // 10 + _MiB) // _MiB + 1) * _MiB)
    output.unlink(missing_ok=True)
    run(
        ["mkfs.vfat", *_INVARIANT, "-C", "-n", label[:11], "-i", volume_id, str(output), str(size // 1024)],
        env=tool_env(epoch),
    )
    copy_files(str(output), files, epoch)


def make_fat_in_disk(
    disk: Path, offset: int, size: int, files: Mapping[str, Path], label: str, volume_id: str, epoch: int = 0
) -> None:
    """A FAT32 filesystem of `size` bytes at byte `offset` of the existing file `disk`."""
    # mkfs.fat sizes clusters for the whole file, not for the partition: on a large disk it
    # picks clusters so big that a 64 MiB FAT32 has too few of them for mtools (and for some
    # firmware). Choose them for the partition.
    per_cluster = "1" if size <= 256 * _MiB else "8"
    run(
        [
            "mkfs.vfat",
            *_INVARIANT,
            "-F",
            "32",
            "-s",
            per_cluster,
            "--offset",
            str(offset // _SECTOR),
            "-n",
            label[:11],
            "-i",
            volume_id,
            str(disk),
            str(size // 1024),
        ],
        env=tool_env(epoch),
    )
    copy_files(f"{disk}@@{offset}", files, epoch)


def copy_files(image: str, files: Mapping[str, Path], epoch: int = 0) -> None:
    """mtools `-i` target: an image file, or `disk@@offset` for a filesystem inside a disk.
    mtools dates what it writes SOURCE_DATE_EPOCH when that is set."""
    env = tool_env(epoch)
    made: set[str] = set()
    for dest in sorted(files):
        parts = dest.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder not in made:
                run(["mmd", "-i", image, f"::/{folder}"], env=env)
                made.add(folder)
        run(["mcopy", "-i", image, "-o", str(files[dest]), f"::/{dest.strip('/')}"], env=env)
