"""What an initramfs was made from, so that a later conversion can take it instead of running
the tool again when nothing of it changed.

A new package changes the packages stage, and the initramfs stage's key with it; yet dracut
takes only a few hundred files of a tree of 20,000 and most packages (htop, say) touch none of
them. After a build we record what the tool read: the rootfs files its staging folder holds
(dracut --keep, mkinitfs -k), whether each program its module scripts name exists, and the
names under the folders it picks files from by listing them (kernel modules, firmware, modprobe
and udev rules). A later build whose tree gives the same record takes that initramfs as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from kairos_build.convert.framework import IDENTITY_FILES
from kairos_build.core import rootfs

READS_FILE = "reads.json"
# Where a module's check looks for a program it names.
PROGRAM_DIRS = ("usr/bin", "usr/sbin", "bin", "sbin", "usr/lib/systemd", "usr/libexec")
# Folders a tool takes files from by listing them: a new name there can change the initramfs.
LISTED_DIRS = (
    "lib/modules",
    "lib/firmware",
    "usr/lib/modprobe.d",
    "etc/modprobe.d",
    "usr/lib/udev/rules.d",
    "etc/udev/rules.d",
)
_WORD = re.compile(rb"[A-Za-z0-9][A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class Reads:
    """What one initramfs was made from (paths relative to the rootfs)."""

    inputs: dict[str, str]  # the stage's own inputs but the packages: kernel, tool files, command
    files: tuple[str, ...]  # rootfs files the tool copied
    words: tuple[str, ...]  # the words of the tool's module scripts (program names among them)
    digest: str  # of all of it, read from the tree it was built on

    def save(self, folder: Path) -> None:
        (folder / READS_FILE).write_text(json.dumps(asdict(self), sort_keys=True) + "\n")

    @staticmethod
    def load(folder: Path) -> Reads | None:
        try:
            data = json.loads((folder / READS_FILE).read_text())
            return Reads(
                dict(data["inputs"]), tuple(data["files"]), tuple(data["words"]), str(data["digest"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def copied_files(root: Path, staging: Path, own: tuple[str, ...]) -> tuple[str, ...]:
    """The regular files of `staging` (a tool's kept staging folder) that are regular files at
    the same path in `root`, but those under the tool's own paths `own` (its inputs already)
    and the node's identity files: systemd's postinst makes a random machine-id in every
    packages tree, the framework stage removes it, and dracut writes an empty one of its own.
    Files the tool writes from what it read (passwd, ld.so.cache, modules.dep) stay: what
    they come from is in the tree at the same path."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(staging):
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(staging).as_posix()
            if (
                path.is_symlink()
                or any(rel == p or rel.startswith(f"{p}/") for p in own)
                or rel in IDENTITY_FILES
                or rootfs.regular_file(root, rel) is None
            ):
                continue
            found.append(rel)
    return tuple(sorted(found))


def script_words(root: Path, own: tuple[str, ...]) -> tuple[str, ...]:
    """Every word of the files under the tool's own paths: the programs its modules look for
    are among them."""
    words: set[bytes] = set()
    for path in own:
        top = rootfs.resolve_in(root, path)
        files = [top] if top.is_file() else [Path(d, n) for d, _s, names in os.walk(top) for n in names]
        for file in files:
            if file.is_file() and not file.is_symlink() and file.stat().st_size < (1 << 20):
                words.update(_WORD.findall(file.read_bytes()))
    return tuple(sorted(w.decode() for w in words))


def reads_digest(root: Path, files: tuple[str, ...], words: tuple[str, ...]) -> str:
    """The files' contents, which of the words are programs of the tree, and the names in
    LISTED_DIRS, as one sha256 over `root`."""
    digest = hashlib.sha256()
    for rel in files:
        found = rootfs.regular_file(root, rel)
        digest.update(f"{rel}\0".encode())
        if found is None:
            digest.update(b"-\0")
        else:
            with found.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    for word in words:
        here = [d for d in PROGRAM_DIRS if os.path.lexists(rootfs.resolve_in(root, d) / word)]
        if here:
            digest.update(f"{word}\0{','.join(here)}\0".encode())
    for listed in LISTED_DIRS:
        top = rootfs.resolve_in(root, listed)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel = Path(dirpath).relative_to(top).as_posix()
            digest.update(f"{listed}/{rel}\0{chr(0).join(sorted(filenames))}\0".encode())
    return digest.hexdigest()
