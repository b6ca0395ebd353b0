"""Same inputs, same bytes: two builds of one tree, from two places, into two output
directories, with two empty caches and a different wall clock, give the same sha256 for the
ISO, the raw disk, the qcow2, the vmdk, the vhd and the converted OCI image."""

from __future__ import annotations

import hashlib
import io
import mmap
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


def build(tree: Path, cache: Path, out: Path) -> dict[str, str]:
    """`build --format iso,raw,qcow2,vmdk,vhd` and `convert -o oci-archive:`; sha256 by format."""
    result = run_cli(
        "build",
        "--format",
        "iso,raw,qcow2,vmdk,vhd",
        "--base",
        f"dir:{tree}",
        "--output",
        str(out),
        "--cache-dir",
        str(cache),
        env=EPOCH,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    sums = {p.name.rsplit(".", 2)[-2]: p.read_text().split()[0] for p in out.glob("*.sha256")}
    for fmt, digest in sums.items():  # the .sha256 files tell the truth
        artifact = next(out.glob(f"*.{fmt}"))
        if fmt not in ("raw", "vhd"):  # 7 GiB, sparse: hashed by the build, trusted here
            assert hashlib.file_digest(artifact.open("rb"), "sha256").hexdigest() == digest
    archive = out / "converted.oci.tar"
    result = run_cli(
        "convert", f"dir:{tree}", "--output", f"oci-archive:{archive}", "--cache-dir", str(cache), env=EPOCH
    )
    assert result.returncode == 0, result.stderr[-4000:]
    sums["oci-archive"] = hashlib.file_digest(archive.open("rb"), "sha256").hexdigest()
    return sums


def test_two_builds_give_bit_identical_artifacts(probe_tree: Path, tmp_path: Path) -> None:
    # The second build reads a copy of the tree somewhere else: where the base lives is not
    # an input. cp -a keeps the files' dates; shutil would read /dev/full forever.
    copy = tmp_path / "elsewhere" / "tree"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", "--reflink=auto", str(probe_tree), str(copy)], check=True)
    first = build(probe_tree, tmp_path / "cache-1", tmp_path / "out-1")
    assert set(first) == {"iso", "raw", "qcow2", "vmdk", "vhd", "oci-archive"}
    # No build path in the output: not the base's, the cache's or the output folder's.
    for artifact in [
        *(tmp_path / "out-1").glob("*.iso"),
        *(tmp_path / "out-1").glob("*.vmdk"),
        tmp_path / "out-1" / "converted.oci.tar",
    ]:
        with artifact.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for path in (tmp_path, probe_tree):
                assert data.find(str(path).encode()) == -1, (artifact.name, path)
    # Only the digests are compared from here: the first build's 5 GB go before the second.
    for done in ("cache-1", "out-1"):
        shutil.rmtree(tmp_path / done)
    time.sleep(2)  # a different wall clock for every tool of the second build
    second = build(copy, tmp_path / "cache-2", tmp_path / "out-2")
    assert first == second


def layer_members(archive: Path) -> dict[str, tuple[int, int, int, str]]:
    """Each path of the archive's (one) layer: mode, size, date and content digest."""
    with tarfile.open(archive) as outer:
        blob = max((m for m in outer.getmembers() if m.isfile()), key=lambda m: m.size)
        layer = outer.extractfile(blob)
        assert layer is not None
        members = {}
        with tarfile.open(fileobj=layer, mode="r|") as inner:  # streamed: 1.3 GB
            for member in inner:
                data = inner.extractfile(member) if member.isfile() else None
                assert data is None or isinstance(data, io.BufferedReader)  # tarfile's ExFileObject
                digest = hashlib.file_digest(data, "sha256").hexdigest() if data else member.linkname
                members[member.name] = (member.mode, member.size, int(member.mtime), digest)
    return members


def test_two_conversions_of_one_base_give_the_same_image(test_cache: Path, tmp_path: Path) -> None:
    # The session's conversion (cached, or made now), then the same base converted again from
    # scratch: a copy of the bootstrapped tree elsewhere, an empty cache, apt run again.
    first = tmp_path / "first.oci.tar"
    result = run_cli(
        "convert",
        "bootstrap:debian/trixie",
        "--output",
        f"oci-archive:{first}",
        "--cache-dir",
        str(test_cache),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    base = tmp_path / "base"
    result = run_cli("unpack", "bootstrap:debian/trixie", str(base), "--cache-dir", str(test_cache))
    assert result.returncode == 0, result.stderr[-4000:]
    second = tmp_path / "second.oci.tar"
    result = run_cli(
        "convert",
        f"dir:{base}",
        "--output",
        f"oci-archive:{second}",
        "--cache-dir",
        str(tmp_path / "fresh-cache"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "installing" in result.stderr  # really converted again, not reused
    if sha256(first) != sha256(second):
        ours, theirs = layer_members(first), layer_members(second)
        differing = sorted(p for p in ours.keys() | theirs.keys() if ours.get(p) != theirs.get(p))
        pytest.fail(f"{len(differing)} paths differ, e.g. {differing[:20]}")


def sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
