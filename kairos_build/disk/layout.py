"""The Kairos disk layout: which partitions, how big, where. Pure arithmetic, no tools, stdlib
only: the raw exporter and the node agent's install (which imports it in the image) share it.

Defaults follow Kairos (64 MiB ESP and OEM, recovery = 2 x its image + 200 MiB, state = room
for active + passive + an upgrade, persistent = the rest), every size can be given, and a
layout that does not fit is refused with the numbers.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from kairos_build.core.errors import InputError

MiB = 1 << 20
GiB = 1 << 30
SECTOR = 512
ALIGN = MiB  # every partition starts on a MiB boundary
TAIL = MiB  # room for the backup GPT at the end

FIRMWARES = ("uefi", "bios", "both")
PARTITION_NAMES = ("efi", "oem", "recovery", "state", "persistent")

# GPT partition type GUIDs.
TYPE_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
TYPE_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
TYPE_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

# All identifiers are UUIDv5 under this namespace: the same inputs give the same disk.
_NAMESPACE = uuid.UUID("6b616972-6f73-2d62-7569-6c642d646973")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, what: str) -> int:
    """'8G', '512M', '1.5GiB', '64MiB', '1048576' (bytes) -> bytes; units are powers of 1024."""
    found = _SIZE.match(text)
    if not found:
        raise InputError(
            f"{what} {text!r} is not a size", hint="write it like 8G, 512M, 1.5GiB or a number of bytes"
        )
    number, unit = float(found.group(1)), found.group(2).upper()
    factor = {"": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}[unit]
    return int(number * factor)


def align_up(value: int, boundary: int = ALIGN) -> int:
    return -(-value // boundary) * boundary


def stable_uuid(seed: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{seed}/{name}"))


@dataclass(frozen=True)
class DiskOptions:
    """What the user may choose about a disk image (sizes in bytes; None = derived)."""

    firmware: str = "both"
    disk_size: int | None = None
    sizes: tuple[tuple[str, int], ...] = ()  # (partition name, bytes) overrides
    image_size: int | None = None  # size of cOS/active.img
    compress: bool = False  # qcow2: zstd-compressed clusters

    def __post_init__(self) -> None:
        if self.firmware not in FIRMWARES:
            raise InputError(f"--firmware {self.firmware!r} is not known", hint=f"use {'|'.join(FIRMWARES)}")
        for name, _size in self.sizes:
            if name not in PARTITION_NAMES:
                raise InputError(
                    f"there is no partition called {name!r}",
                    hint=f"sizes can be given for: {', '.join(PARTITION_NAMES)}",
                )

    @property
    def uefi(self) -> bool:
        return self.firmware in ("uefi", "both")

    @property
    def bios(self) -> bool:
        return self.firmware in ("bios", "both")

    def size_of(self, name: str) -> int | None:
        return dict(self.sizes).get(name)


def parse_partition_sizes(values: list[str]) -> tuple[tuple[str, int], ...]:
    """['state=8G', 'oem=128M'] -> (('state', 8 GiB), ('oem', 128 MiB))."""
    parsed = []
    for value in values:
        name, sep, size = value.partition("=")
        if not sep:
            raise InputError(
                f"--partition-size {value!r} is not NAME=SIZE",
                hint=f"e.g. state=8G; names: {', '.join(PARTITION_NAMES)}",
            )
        parsed.append((name.strip(), parse_size(size, f"the size of {name.strip()}")))
    return tuple(parsed)


@dataclass(frozen=True)
class Partition:
    name: str  # GPT partition name
    label: str | None  # filesystem label (None for the BIOS boot partition)
    type_guid: str
    start: int  # bytes
    size: int  # bytes
    guid: str

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Layout:
    disk_size: int
    disk_guid: str
    partitions: tuple[Partition, ...]
    image_size: int

    def by_label(self, label: str) -> Partition:
        return next(p for p in self.partitions if p.label == label)

    def describe(self) -> str:
        return ", ".join(f"{p.label or p.name} {p.size // MiB} MiB" for p in self.partitions)


def default_image_size(rootfs_bytes: int) -> int:
    """cOS/active.img: the rootfs, 10% for ext4's own structures, and 200 MiB of headroom."""
    return align_up(rootfs_bytes * 11 // 10 + 200 * MiB, 16 * MiB)


def plan_layout(options: DiskOptions, rootfs_bytes: int, recovery_bytes: int, seed: str) -> Layout:
    """Sizes and offsets of every partition; `recovery_bytes` is what COS_RECOVERY holds."""
    image = options.image_size or default_image_size(rootfs_bytes)
    if image < rootfs_bytes * 21 // 20:
        raise InputError(
            f"an image size of {image // MiB} MiB cannot hold the {rootfs_bytes // MiB} MiB rootfs",
            hint=f"give --image-size {default_image_size(rootfs_bytes) // MiB}M or more",
        )
    wanted: list[tuple[str, str | None, str, int]] = []  # name, label, type, size
    if options.uefi:
        wanted.append(("efi", "COS_GRUB", TYPE_ESP, options.size_of("efi") or 64 * MiB))
    if options.bios:
        wanted.append(("bios", None, TYPE_BIOS_BOOT, MiB))
    wanted += [
        ("oem", "COS_OEM", TYPE_LINUX, options.size_of("oem") or 64 * MiB),
        (
            "recovery",
            "COS_RECOVERY",
            TYPE_LINUX,
            options.size_of("recovery") or align_up(recovery_bytes * 2 + 200 * MiB),
        ),
        # Active, passive and a transition image during an upgrade, plus slack (kairos#1751).
        ("state", "COS_STATE", TYPE_LINUX, options.size_of("state") or 3 * image + 1000 * MiB),
    ]
    fixed = sum(align_up(size) for *_rest, size in wanted)
    persistent_min = 256 * MiB
    persistent = options.size_of("persistent")
    if options.disk_size is not None:
        disk = align_up(options.disk_size)
        room = disk - ALIGN - TAIL - fixed
        needed = fixed + ALIGN + TAIL + (persistent or persistent_min)
        if room < (persistent or persistent_min):
            raise InputError(
                f"a {options.disk_size / GiB:.2f} GiB disk is too small: the partitions need "
                f"{needed / GiB:.2f} GiB ({fixed // MiB} MiB fixed + "
                f"{(persistent or persistent_min) // MiB} MiB persistent + 2 MiB GPT)",
                hint=f"give --disk-size {-(-needed // GiB)}G or smaller partitions",
            )
        persistent = persistent or room
    else:
        persistent = persistent or 2 * GiB
        disk = align_up(ALIGN + fixed + align_up(persistent) + TAIL, GiB)
        persistent = disk - ALIGN - TAIL - fixed
    wanted.append(("persistent", "COS_PERSISTENT", TYPE_LINUX, persistent))

    partitions = []
    offset = ALIGN
    for name, label, type_guid, size in wanted:
        size = align_up(size)
        partitions.append(Partition(name, label, type_guid, offset, size, stable_uuid(seed, name)))
        offset += size
    if offset + TAIL > disk:
        raise InputError(
            f"the partitions need {(offset + TAIL) // MiB} MiB, the disk has {disk // MiB} MiB",
            hint="give a larger --disk-size or smaller partitions",
        )
    return Layout(disk, stable_uuid(seed, "disk"), tuple(partitions), image)


def sfdisk_script(layout: Layout) -> str:
    """The partition table as an sfdisk script (the build writes it into an image file, the
    node agent onto a disk)."""
    lines = [
        "label: gpt",
        f"label-id: {layout.disk_guid.upper()}",
        "unit: sectors",
        "first-lba: 2048",
        "sector-size: 512",
    ]
    for part in layout.partitions:
        lines.append(
            f"start={part.start // SECTOR}, size={part.size // SECTOR}, "
            f'type={part.type_guid}, uuid={part.guid.upper()}, name="{part.name}"'
        )
    return "\n".join(lines) + "\n"
