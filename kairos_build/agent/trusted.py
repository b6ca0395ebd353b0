"""kairos-agent on a Trusted Boot node: systemd-boot, signed UKIs, verified root images.

A node cannot sign: an upgrade brings the UKI and the image a build signed (a `uki` artifact
folder, kairos_build/exporters/uki.py). Files are named by the image's root hash
(`EFI/kairos/system-ID.efi` on the ESP, `cOS/system-ID.img` on COS_STATE), so an upgrade adds
the new pair and then rewrites two loader entries: `passive.conf` takes what `active` started,
and `active+3.conf` the new UKI, with three tries. systemd-boot counts them down on each boot
and systemd-bless-boot drops the counter once the boot reached boot-complete.target; an entry
left at zero tries is sorted last, and the boot falls to passive. The active entry is written
last: a power cut before it leaves the node as it was.

Reset (from recovery) lays back the recovery image, its system UKI and the build's loader
entries (kept on COS_RECOVERY) as active and passive, and wipes COS_PERSISTENT's LUKS header:
the next boot seals a new volume to the TPM. COS_OEM stays sealed (the recovery UKI opens it);
`--reset-oem` formats the filesystem inside the seal.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

from kairos_build.agent.system import (
    NodeError,
    cmdline_value,
    label_device,
    mounted,
    replace_durably,
    run,
    say,
    settle,
    writable,
)

ESP_LABEL = "COS_GRUB"
UKI_DIR = "EFI/kairos"
ENTRIES_DIR = "loader/entries"
RESET_KIT = "kairos/trusted"
TRIES = 3
PERSISTENT_PARTITION = Path("/dev/disk/by-partlabel/persistent")
# systemd-boot's variables (the Boot Loader Interface).
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
EFIVARS = Path("/sys/firmware/efi/efivars")
_ID = re.compile(r"^system-([0-9a-f]{16})\.(?:efi|img)$")
_COUNTER = re.compile(r"\+\d+(?:-\d+)?$")


def is_trusted() -> bool:
    """Booted from one of our UKIs: the root is pinned by a signed root hash."""
    return cmdline_value("kairos.verity.roothash") is not None


def entry_id(filename: str) -> str:
    """`active+2-1.conf` -> `active`: the entry without its boot counter."""
    return _COUNTER.sub("", filename.removesuffix(".conf"))


def read_loader_variable(name: str, efivars: Path = EFIVARS) -> str | None:
    """A systemd-boot string variable (UTF-16, after 4 bytes of attributes), None if unset."""
    try:
        data = (efivars / f"{name}-{LOADER_GUID}").read_bytes()[4:]
    except OSError:
        return None
    return data.decode("utf-16-le", errors="replace").rstrip("\0") or None


def selected_entry(efivars: Path = EFIVARS) -> str | None:
    """The loader entry this boot came from (`active`, `passive`, ...), None without systemd-boot."""
    name = read_loader_variable("LoaderEntrySelected", efivars)
    return entry_id(name) if name else None


def set_one_shot_entry(entry: str, efivars: Path = EFIVARS) -> None:
    """The entry systemd-boot starts on the next boot only (LoaderEntryOneShot)."""
    attributes = 0x7  # non-volatile, boot service and runtime access
    data = struct.pack("<I", attributes) + f"{entry}.conf\0".encode("utf-16-le")
    path = efivars / f"LoaderEntryOneShot-{LOADER_GUID}"
    # One write(2): efivarfs takes a variable whole or not at all.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def esp_device() -> Path:
    device = label_device(ESP_LABEL)
    if device is None:
        raise NodeError(f"this node has no {ESP_LABEL} (its EFI system partition)")
    return device


def entry_files(esp: Path, role: str) -> list[Path]:
    folder = esp / ENTRIES_DIR
    return sorted(p for p in folder.glob("*.conf") if entry_id(p.name) == role) if folder.is_dir() else []


def entry_efi(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        key, _sep, value = line.strip().partition(" ")
        if key == "efi":
            return value.strip()
    return None


def entry_lines(path: Path, **changes: str) -> list[str]:
    """An entry's lines without its `efi`, with `changes` (key -> value) applied."""
    lines = []
    for line in path.read_text().splitlines():
        key = line.strip().partition(" ")[0]
        if key == "efi":
            continue
        lines.append(f"{key} {changes.pop(key)}" if key in changes else line)
    return lines + [f"{key} {value}" for key, value in changes.items()]


def write_entry(esp: Path, role: str, lines: list[str], efi: str, tries: int | None) -> None:
    """`role`'s loader entry, with a boot counter when `tries`; its older files go once the
    new one is in place."""
    old = entry_files(esp, role)
    name = f"{role}+{tries}.conf" if tries else f"{role}.conf"
    target = esp / ENTRIES_DIR / name
    staged = target.with_name(f".{name}.new")
    staged.write_text("\n".join([*lines, f"efi {efi}"]) + "\n")
    replace_durably(staged, target)
    for path in old:
        if path != target:
            path.unlink()


def referenced(esp: Path) -> set[str]:
    """The UKI paths the loader entries start."""
    folder = esp / ENTRIES_DIR
    return {efi for path in folder.glob("*.conf") if (efi := entry_efi(path))}


def collect_garbage(esp: Path, state: Path) -> None:
    """System UKIs and images no entry starts any more."""
    keep = {Path(efi).name for efi in referenced(esp)}
    ids = {m.group(1) for name in keep if (m := _ID.match(name))}
    for path in sorted((esp / UKI_DIR).glob("system-*.efi")):
        if path.name not in keep:
            path.unlink()
    for path in sorted((state / "cOS").glob("system-*.img")):
        found = _ID.match(path.name)
        if found and found.group(1) not in ids:
            path.unlink()


BUNDLE_HINT = (
    "a Trusted Boot node upgrades from what `kairos-build uki` (a folder: dir:PATH) "
    "or `kairos-build uki-image` (an OCI image: oci-archive:FILE, or pushed to a "
    "registry) writes"
)


def bundle(folder: Path, source: str | None = None) -> tuple[Path, Path]:
    """The system UKI and image of a `uki` artifact folder (or the unpacked `uki-image` of
    `source`)."""
    what = source or str(folder)
    ukis = sorted((folder / UKI_DIR).glob("system-*.efi"))
    if len(ukis) != 1:
        raise NodeError(
            f"{what} holds no single {UKI_DIR}/system-*.efi: not a Trusted Boot upgrade", hint=BUNDLE_HINT
        )
    image = folder / "cOS" / ukis[0].name.replace(".efi", ".img")
    if not image.is_file():
        raise NodeError(f"{what} has {ukis[0].name} but not cOS/{image.name}", hint=BUNDLE_HINT)
    return ukis[0], image


def require_bundle(folder: Path, source: str) -> None:
    """images.source_tree's check for a Trusted Boot node's upgrade source."""
    bundle(folder, source)


def copy_durably(source: Path, target: Path) -> None:
    if target.exists():
        return  # named by its root hash: the same name is the same content
    staged = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, staged)
    replace_durably(staged, target)


def check_room(folder: Path, size: int, what: str) -> None:
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    if free < size + (16 << 20):
        raise NodeError(
            f"{what} has {free >> 20} MiB free; the upgrade needs {size >> 20} MiB",
            hint="free space or make the partition larger",
        )


def upgrade(folder: Path, state_mount: Path, booted: str) -> str:
    """Install the bundle in `folder` as active; returns its UKI's name."""
    uki, image = bundle(folder)
    with mounted(esp_device(), "rw") as esp:
        actives = entry_files(esp, "active")
        passives = entry_files(esp, "passive")
        if not actives:
            raise NodeError("the ESP has no active loader entry: is this a Trusted Boot node?")
        check_room(state_mount / "cOS", image.stat().st_size, "COS_STATE")
        check_room(esp / UKI_DIR, uki.stat().st_size, ESP_LABEL)
        with writable(state_mount):
            say(f"writing {image.name} ({image.stat().st_size >> 20} MiB)")
            copy_durably(image, state_mount / "cOS" / image.name)
            copy_durably(uki, esp / UKI_DIR / uki.name)
            current = entry_efi(actives[0])
            if booted == "active_boot" and current:
                # Passive keeps its own title and place in the menu, and says which version.
                version = next(
                    (
                        line.partition(" ")[2]
                        for line in entry_lines(actives[0])
                        if line.startswith("version ")
                    ),
                    None,
                )
                changes = {"version": version} if version else {}
                write_entry(esp, "passive", entry_lines((passives or actives)[0], **changes), current, None)
            # The new entry's title and version come with the bundle.
            template = folder / ENTRIES_DIR / "active.conf"
            write_entry(
                esp,
                "active",
                entry_lines(template if template.is_file() else actives[0]),
                f"/{UKI_DIR}/{uki.name}",
                TRIES,
            )
            collect_garbage(esp, state_mount)
    return uki.name


def wipe_persistent() -> None:
    """COS_PERSISTENT's LUKS headers gone: the next boot finds it blank and seals a new one."""
    if not PERSISTENT_PARTITION.exists():
        raise NodeError("this node has no partition named persistent")
    device = str(PERSISTENT_PARTITION.resolve())
    run(["wipefs", "--all", "--quiet", device])
    # LUKS2 keeps a second header copy within its first 16 MiB; zero the lot.
    with open(device, "r+b") as handle:
        for _ in range(32):
            handle.write(b"\0" * (1 << 20))
        handle.flush()
        os.fsync(handle.fileno())
    settle()


def reset(recovery_mount: Path, reset_persistent: bool) -> None:
    """From recovery: the recovery image and its system UKI as active and passive."""
    kits = sorted((recovery_mount / RESET_KIT).glob("system-*.efi"))
    if len(kits) != 1:
        raise NodeError(f"COS_RECOVERY has no single {RESET_KIT}/system-*.efi to reset from")
    uki = kits[0]
    image = recovery_mount / "cOS" / uki.name.replace(".efi", ".img")
    state_device = label_device("COS_STATE")
    if state_device is None or not image.is_file():
        raise NodeError("this node has no COS_STATE partition or COS_RECOVERY no system image")
    with mounted(esp_device(), "rw") as esp, mounted(state_device, "rw") as state:
        say(f"writing {image.name} from recovery")
        copy_durably(image, state / "cOS" / image.name)
        copy_durably(uki, esp / UKI_DIR / uki.name)
        # The entries as the build wrote them (titles, versions), kept beside the UKI.
        current = (entry_files(esp, "active") or entry_files(esp, "recovery"))[0]
        efi = f"/{UKI_DIR}/{uki.name}"
        for role in ("passive", "active"):
            kept = recovery_mount / RESET_KIT / f"{role}.conf"
            write_entry(esp, role, entry_lines(kept if kept.is_file() else current), efi, None)
        collect_garbage(esp, state)
    if reset_persistent:
        say("wiping COS_PERSISTENT: the next boot seals a new one to the TPM")
        wipe_persistent()
