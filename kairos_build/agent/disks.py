"""The node's disks as the kernel lists them (/sys/class/block): which one to install to, its
size, the device of each partition."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kairos_build.agent.system import NodeError, settle

SYS_BLOCK = Path("/sys/class/block")
# Never install to these: memory, loop and optical devices, device-mapper and md assemblies.
_SKIP = ("loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def disk_size(name: str) -> int:
    return int(_read(SYS_BLOCK / name / "size") or 0) * 512


def partitions_of(name: str) -> list[str]:
    folder = SYS_BLOCK / name
    return (
        sorted(child.name for child in folder.iterdir() if (child / "partition").exists())
        if folder.is_dir()
        else []
    )


def held_devices() -> set[str]:
    """Block devices with something mounted from them (or a partition of them)."""
    held = set()
    for line in _read(Path("/proc/self/mounts")).splitlines():
        source = line.split(" ", 1)[0]
        if source.startswith("/dev/"):
            held.add(Path(os.path.realpath(source)).name)
    return held


def candidate_disks() -> list[str]:
    """Whole, writable disks, in the kernel's order."""
    found = []
    for entry in sorted(SYS_BLOCK.iterdir()) if SYS_BLOCK.is_dir() else []:
        name = entry.name
        if name.startswith(_SKIP) or (entry / "partition").exists():
            continue
        if _read(entry / "ro") == "1" or disk_size(name) == 0:
            continue
        found.append(name)
    return found


def pick_device(wanted: str) -> Path:
    """`auto`: the first disk with no partitions that nothing is mounted from; else the path
    given, which must be a whole disk."""
    held = held_devices()
    if wanted == "auto":
        for name in candidate_disks():
            if not partitions_of(name) and name not in held:
                return Path("/dev") / name
        listed = (
            ", ".join(
                f"{n} ({disk_size(n) >> 20} MiB, {len(partitions_of(n))} partitions)"
                for n in candidate_disks()
            )
            or "none"
        )
        raise NodeError(
            "no disk to install to: `device: auto` takes the first disk with no "
            f"partitions, and there is none (disks: {listed})",
            hint="attach an empty disk, or name one with install.device / --device",
        )
    device = Path(os.path.realpath(wanted))
    name = device.name
    if not (SYS_BLOCK / name).is_dir() or (SYS_BLOCK / name / "partition").exists():
        raise NodeError(
            f"{wanted} is not a whole disk of this node",
            hint=f"disks: {', '.join(candidate_disks()) or 'none'}",
        )
    if name in held or any(part in held for part in partitions_of(name)):
        raise NodeError(f"{wanted} is in use (something is mounted from it)")
    return device


def partition_device(disk: Path, number: int) -> Path:
    """/dev/vda1, /dev/nvme0n1p1...: the kernel's name of partition `number` of `disk`."""
    deadline = time.monotonic() + 30
    while True:
        for name in partitions_of(disk.name):
            if _read(SYS_BLOCK / name / "partition") == str(number):
                node = Path("/dev") / name
                if node.exists():
                    return node
        if time.monotonic() > deadline:
            raise NodeError(f"partition {number} of {disk} did not appear")
        settle()
        time.sleep(0.5)
