"""The artifact checksum reads only the data of sparse files and must equal plain sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kairos_build.publish.files import sha256_file

MiB = 1 << 20


@pytest.mark.parametrize(
    "layout",
    [
        [],  # empty file
        [(0, b"x" * 70000)],  # data only at the start, then a hole to the end
        [(5 * MiB, b"y" * 3)],  # a hole first
        [(0, b"a"), (4 * MiB - 1, b"bc"), (9 * MiB + 17, os.urandom(100000))],  # across chunk edges
    ],
)
@pytest.mark.parametrize("size", [0, 12 * MiB])
def test_sparse_hash_equals_plain_sha256(tmp_path: Path, layout: list[tuple[int, bytes]], size: int) -> None:
    path = tmp_path / "disk.img"
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset, data in layout:
            handle.seek(offset)
            handle.write(data)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
