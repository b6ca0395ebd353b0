"""Make a FAT filesystem image from files, with mtools: no loop device, no mount."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kairos_build.tools import run

_MiB = 1 << 20


def make_fat_image(output: Path, files: Mapping[str, Path], label: str, min_size: int = 2 * _MiB) -> None:
    """Write a FAT image at `output` holding `files` (image path -> host file).

    The size is what the files need plus room for FAT structures, rounded up to a MiB.
    """
    payload = sum(src.stat().st_size for src in files.values())
    size = max(min_size, ((payload * 11 // 10 + _MiB) // _MiB + 1) * _MiB)
    output.unlink(missing_ok=True)
    run(["mkfs.vfat", "-C", "-n", label[:11], "-i", "4b41524f", str(output), str(size // 1024)])
    made: set[str] = set()
    for dest in sorted(files):
        parts = dest.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder not in made:
                run(["mmd", "-i", str(output), f"::/{folder}"])
                made.add(folder)
        run(["mcopy", "-i", str(output), "-o", str(files[dest]), f"::/{dest.strip('/')}"])
