"""Build rpm package databases the way rpm writes them, for tests: header blobs (big-endian
index + data store, with the HEADERIMMUTABLE region trailer), sqlite rpmdb.sqlite (rpm >= 4.16)
and ndb Packages.db (openSUSE). Written from the formats, independent of kairos_build.check.rpmdb."""

from __future__ import annotations

import sqlite3
import struct
import zlib
from pathlib import Path

NAME, VERSION, RELEASE, EPOCH, SUMMARY, ARCH = 1000, 1001, 1002, 1003, 1004, 1022
HEADERIMMUTABLE = 63
INT32, STRING, BIN, I18NSTRING = 4, 6, 7, 9


def header_blob(name: str, version: str, release: str = "1", epoch: int | None = None) -> bytes:
    """One installed package's header as rpmdb stores it (no lead, no magic)."""
    data = bytearray()
    entries: list[tuple[int, int, int, int]] = []

    def add_string(tag: int, kind: int, value: str) -> None:
        entries.append((tag, kind, len(data), 1))
        data.extend(value.encode() + b"\0")

    add_string(NAME, STRING, name)
    add_string(VERSION, STRING, version)
    add_string(RELEASE, STRING, release)
    add_string(SUMMARY, I18NSTRING, f"The {name} package")
    if epoch is not None:
        data.extend(bytes(-len(data) % 4))  # INT32 values are 4-byte aligned
        entries.append((EPOCH, INT32, len(data), 1))
        data.extend(struct.pack(">i", epoch))
    add_string(ARCH, STRING, "x86_64")
    # The region: its index entry points at a trailer at the end of the data, which holds a
    # negative offset covering all index entries.
    count = len(entries) + 1
    entries.insert(0, (HEADERIMMUTABLE, BIN, len(data), 16))
    data.extend(struct.pack(">IIiI", HEADERIMMUTABLE, BIN, -16 * count, 16))
    index = b"".join(struct.pack(">IIiI", *entry) for entry in entries)
    return struct.pack(">II", count, len(data)) + index + bytes(data)


def write_sqlite_rpmdb(path: Path, blobs: list[bytes]) -> Path:
    """rpm's sqlite schema: Packages(hnum, blob) plus an index table per tag (Name here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE 'Packages' (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
    connection.execute(
        "CREATE TABLE 'Name' (key 'TEXT' NOT NULL, hnum INTEGER NOT NULL, "
        "idx INTEGER NOT NULL, FOREIGN KEY (hnum) REFERENCES 'Packages'(hnum))"
    )
    for blob in blobs:
        cursor = connection.execute("INSERT INTO Packages (blob) VALUES (?)", (blob,))
        name_offset = 8 + 16 * struct.unpack_from(">I", blob)[0]
        name = blob[name_offset:].split(b"\0", 1)[0].decode()  # NAME is the first string
        connection.execute("INSERT INTO Name VALUES (?, ?, 0)", (name, cursor.lastrowid))
    connection.commit()
    connection.close()
    return path


def write_ndb_rpmdb(path: Path, blobs: list[bytes]) -> Path:
    """rpm's ndb Packages.db: a 32-byte header and slot pages (little-endian), then each blob
    framed by BlbS (magic, pkgidx, generation, length) and BlbE (adler32, length, magic)
    in 16-byte blocks."""
    page, block = 4096, 16
    slots = bytearray(page)
    slots[:20] = b"RpmP" + struct.pack("<IIII", 0, 7, 1, len(blobs) + 1)
    for offset in range(32, page, 16):
        slots[offset : offset + 4] = b"Slot"  # free slots: magic and zeros
    body = bytearray()
    next_block = page // block
    for index, blob in enumerate(blobs, 1):
        head = b"BlbS" + struct.pack("<III", index, 7, len(blob))
        pad = bytes(-(16 + len(blob) + 12) % block)
        checksum = zlib.adler32(head + blob + pad, 1)
        framed = head + blob + pad + struct.pack("<II", checksum, len(blob)) + b"BlbE"
        blocks = len(framed) // block
        slot = 32 + 16 * (index - 1)
        slots[slot : slot + 16] = b"Slot" + struct.pack("<III", index, next_block, blocks)
        body += framed
        next_block += blocks
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(slots) + bytes(body))
    return path
