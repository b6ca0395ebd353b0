"""ext4 filesystems from a directory with `mkfs.ext4 -d`: no loop device, no mount.

Written either as an image file or straight into a disk file at a partition's offset
(`-E offset=`), so a partition is never copied twice.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from kairos_build.core.reproducible import tool_env
from kairos_build.core.tools import run
from kairos_build.disk.filesystems import grub_safe_features


@cache
def mke2fs_version() -> str:
    """'mke2fs 1.47.0 (5-Feb-2023)': part of the ext4 cache key.

    Not captured apart: mke2fs prints its version on stderr, which run() then merges in.
    """
    return run(["mkfs.ext4", "-V"]).strip().splitlines()[0]


@cache
def _grub_safe_features() -> str:
    return grub_safe_features(mke2fs_version())


def ext4_options(label: str, fs_uuid: str, offset: int = 0) -> list[str]:
    """Every mkfs.ext4 option but the source, target and size (also in the cache key)."""
    extended = [f"hash_seed={fs_uuid}", "lazy_itable_init=0", "lazy_journal_init=0"]
    if offset:
        extended.append(f"offset={offset}")
    return [
        "-q",
        "-F",
        "-L",
        label,
        "-U",
        fs_uuid,
        "-O",
        _grub_safe_features(),
        "-E",
        ",".join(extended),
        "-m",
        "0",
    ]


def make_ext4(
    target: Path,
    size: int,
    label: str,
    fs_uuid: str,
    source: Path | None = None,
    offset: int = 0,
    epoch: int = 0,
) -> None:
    """An ext4 of `size` bytes labelled `label`, holding `source`'s tree when given.

    With `offset`, it is written into the existing file `target` at that byte offset (a
    partition of a disk image); without, `target` becomes the filesystem image itself.
    """
    if not offset:
        target.unlink(missing_ok=True)
    argv = ["mkfs.ext4", *ext4_options(label, fs_uuid, offset)]
    if source is not None:
        argv += ["-d", str(source)]
    # E2FSPROGS_FAKE_TIME: every time mke2fs would take from the clock (superblock, inodes
    # it makes) is `epoch`; with the UUID and hash seed fixed, the same tree gives the same bytes.
    run([*argv, str(target), f"{size // 1024}k"], env=tool_env(epoch))
    if source is not None:
        pin_inode_times(target, offset, epoch)


def pin_inode_times(target: Path, offset: int, epoch: int) -> None:
    """Every used inode's ctime and atime set to `epoch`.

    mke2fs -d (1.47.0, Debian 12) copies them from the host files, where the kernel sets
    ctime on every change and atime on reads, so two builds of the same tree differ in them;
    mtimes are the tree's own (clamped by conversion). debugfs changes them in one batch
    (about 0.1 s for 20,000 inodes); e2fsprogs >= 1.47.1 could read a tarball instead. The
    batch is written to a file as it is made: memory stays flat however many files there are.
    """
    device = f"{target}?offset={offset}" if offset else str(target)
    with tempfile.NamedTemporaryFile("w", dir=target.parent, prefix=".debugfs-") as batch:
        for first, last in used_inode_ranges(device):
            for ino in range(first, last + 1):
                batch.write(f"sif <{ino}> ctime @{epoch}\nsif <{ino}> atime @{epoch}\n")
        batch.flush()
        run(["debugfs", "-w", "-f", batch.name, device], env=tool_env(epoch))


def used_inode_ranges(device: str) -> Iterator[tuple[int, int]]:
    """Inode numbers in use, as inclusive ranges: the root directory, and from the first
    non-reserved inode on (reserved ones carry mke2fs's own times) whatever dumpe2fs does
    not list as free, group by group."""
    report = run(["dumpe2fs", device], capture=True)
    per_group = int(_field(report, "Inodes per group"))
    first = int(_field(report, "First inode"))
    yield 2, 2
    for group, ranges in enumerate(re.findall(r"^\s+Free inodes: (.*)$", report, re.MULTILINE)):
        start = max(group * per_group + 1, first)
        for span in filter(None, (part.strip() for part in ranges.split(","))):
            low, _, high = span.partition("-")
            if int(low) > start:
                yield start, int(low) - 1
            start = max(start, int(high or low) + 1)
        end = (group + 1) * per_group
        if start <= end:
            yield start, end


def _field(report: str, name: str) -> str:
    found = re.search(rf"^{name}:\s+(\S+)", report, re.MULTILINE)
    if found is None:
        raise ValueError(f"dumpe2fs printed no {name!r}")
    return found.group(1)
