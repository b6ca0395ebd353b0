"""Read installed package versions from an rpm database, as files: nothing from the image runs.

Two database formats hold the same records, rpm "header blobs":
- sqlite (rpm >= 4.16: Fedora, RHEL 9 and its rebuilds): `rpmdb.sqlite`, table Packages(hnum,
  blob). Opened read-only and immutable, so sqlite neither writes nor locks anything.
- ndb (openSUSE and SLE build rpm without sqlite): `Packages.db`, a header, slot pages that
  index the blobs, and each blob framed by a `BlbS` head and a `BlbE` tail.

A header blob is big-endian: il (entry count) and dl (data length), il entries of (tag, type,
offset, count), then dl bytes of data; a STRING entry's value is NUL-terminated at its offset.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

from kairos_build.core import rootfs
from kairos_build.core.errors import HostileContentError

TAG_NAME, TAG_VERSION, TAG_RELEASE = 1000, 1001, 1002
_STRING = 6
_MAX_ENTRIES = 1 << 16  # rpm itself refuses headers with more index entries than this
_MAX_DATA = 256 << 20
_MAX_BLOBS = 100_000  # a few thousand packages is a big system
_DATABASES = (
    "usr/lib/sysimage/rpm/rpmdb.sqlite",
    "var/lib/rpm/rpmdb.sqlite",
    "usr/lib/sysimage/rpm/Packages.db",
    "var/lib/rpm/Packages.db",
)

_NDB_MAGIC, _SLOT_MAGIC, _BLOB_HEAD, _BLOB_TAIL = b"RpmP", b"Slot", b"BlbS", b"BlbE"
_PAGE, _SLOT, _BLOCK, _NDB_HEADER = 4096, 16, 16, 32


class BadHeader(ValueError):
    """A header blob that does not follow the format (truncated, out of bounds)."""


def header_strings(
    blob: bytes,
    tags: tuple[int, ...] = (TAG_NAME, TAG_VERSION, TAG_RELEASE),
) -> dict[int, str]:
    """The STRING values of `tags` in one header blob; every offset is bounds-checked."""
    if len(blob) < 8:
        raise BadHeader("shorter than its 8-byte preamble")
    il, dl = struct.unpack_from(">II", blob)
    if il == 0 or il > _MAX_ENTRIES or dl > _MAX_DATA:
        raise BadHeader(f"implausible sizes (il={il}, dl={dl})")
    start = 8 + 16 * il
    if start + dl > len(blob):
        raise BadHeader(f"{len(blob)} bytes, but the header says {start + dl}")
    data = blob[start : start + dl]
    found: dict[int, str] = {}
    for index in range(il):
        tag, kind, offset, _count = struct.unpack_from(">IIiI", blob, 8 + 16 * index)
        if tag not in tags or kind != _STRING:
            continue
        end = data.find(b"\0", offset) if 0 <= offset < dl else -1
        if end < 0:
            raise BadHeader(f"tag {tag} points outside the data")
        found[tag] = data[offset:end].decode("utf-8", errors="replace")
    return found


def _sqlite_blobs(path: Path) -> Iterator[bytes]:
    # mode=ro and immutable=1: no journal, no -wal/-shm files, no locks on the image's tree.
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    connection = sqlite3.connect(uri, uri=True)
    try:
        for count, (blob,) in enumerate(connection.execute("SELECT blob FROM Packages")):
            if count >= _MAX_BLOBS:
                break
            if isinstance(blob, bytes):
                yield blob
    finally:
        connection.close()


def _ndb_blobs(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        head = handle.read(_NDB_HEADER)
        if len(head) < _NDB_HEADER or head[:4] != _NDB_MAGIC:
            raise BadHeader("not an ndb Packages.db")
        slot_pages = int.from_bytes(head[12:16], "little")
        if slot_pages > 1024:
            raise BadHeader(f"implausible slot page count {slot_pages}")
        handle.seek(0)
        slots = handle.read(slot_pages * _PAGE)  # the first 32 bytes are the header above
        for offset in range(_NDB_HEADER, len(slots) - _SLOT + 1, _SLOT):
            if slots[offset : offset + 4] != _SLOT_MAGIC:
                raise BadHeader(f"slot at {offset} has no Slot magic")
            block, blocks = struct.unpack_from("<II", slots, offset + 8)
            if block == 0:
                continue  # a free slot
            handle.seek(block * _BLOCK)
            blob_head = handle.read(16)
            length = int.from_bytes(blob_head[12:16], "little")
            if blob_head[:4] != _BLOB_HEAD or 16 + length + 12 > blocks * _BLOCK:
                raise BadHeader(f"blob at block {block} has no BlbS head or does not fit")
            blob = handle.read(length)
            # The tail (adler32, length, BlbE) ends the blob's last block, after any padding.
            handle.seek((block + blocks) * _BLOCK - 12)
            tail = handle.read(12)
            if len(blob) != length or tail[8:12] != _BLOB_TAIL or tail[4:8] != blob_head[12:16]:
                raise BadHeader(f"blob at block {block} is truncated")
            yield blob


def rpm_database(root: Path) -> str | None:
    """The rootfs path of its rpm database, if it has one."""
    for rel in _DATABASES:
        try:
            if rootfs.resolve_in(root, rel).is_file():
                return rel
        except HostileContentError:
            continue
    return None


def rpm_package_version(root: Path, package: str) -> tuple[str | None, str | None]:
    """(version, evidence path) of `package` in the rootfs's rpm database, else (None, None).

    A damaged or hostile database is no evidence rather than a crash."""
    rel = rpm_database(root)
    if rel is None:
        return None, None
    path = rootfs.resolve_in(root, rel)
    blobs = _sqlite_blobs(path) if rel.endswith(".sqlite") else _ndb_blobs(path)
    try:
        for blob in blobs:
            values = header_strings(blob)
            if values.get(TAG_NAME) == package and TAG_VERSION in values:
                return values[TAG_VERSION], f"/{rel}"
    except (BadHeader, sqlite3.Error, OSError):
        return None, None
    return None, None
