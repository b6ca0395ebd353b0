"""Publishing: an artifact appears under its final name only when complete, with its checksum.

Written under a hidden temporary name (.NAME.partial-PID) and renamed; what a killed build
left behind is removed by the next one. `build` and `inject` publish through here, and
`unpack` and `convert -o dir:` their trees.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kairos_build.core.cache import pid_is_gone
from kairos_build.core.errors import InputError
from kairos_build.core.log import step
from kairos_build.core.tools import run


@dataclass(frozen=True)
class Artifact:
    format: str
    path: Path
    sha256: str
    size: int
    checksum: Path | None = None  # NAME.sha256 beside a file; SHA256SUMS inside a folder
    sbom: Path | None = None  # NAME.spdx.json beside it
    manifest: Path | None = None  # NAME.build.json beside it


def partial_path(final: Path) -> Path:
    """The hidden name `final` is written under before its rename."""
    return final.with_name(f".{final.name}.partial-{os.getpid()}")


def discard(partial: Path) -> None:
    """Remove a temporary file or directory of a build that did not finish."""
    if partial.is_dir() and not partial.is_symlink():
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.unlink(missing_ok=True)


def check_output_dir(path: Path) -> None:
    """Fail before any work when the artifacts could not be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".kairos-build-probe-"):
            pass
    except OSError as exc:
        raise InputError(
            f"output directory {path} is not writable: {exc.strerror}",
            hint="choose another with --output DIR",
        ) from exc


def remove_stale_partials(output_dir: Path) -> None:
    """Half-written artifacts of killed builds (.NAME.partial-PID, .NAME.old-PID): a build
    that ends in any other way removes its own."""
    for leftover in [*output_dir.glob(".*.partial-*"), *output_dir.glob(".*.old-*")]:
        if pid_is_gone(leftover.name.rsplit("-", 1)[-1]):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    """The file's sha256, reading only its data: a disk image is mostly holes, and reading a
    hole makes the kernel produce zeros page by page (seconds per GiB), while hashing a zero
    buffer we already have is several times faster."""
    digest = hashlib.sha256()
    chunk = 4 << 20
    zeros = memoryview(bytes(chunk))
    with path.open("rb") as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left (or no SEEK_DATA: read it all)
                data = size if _has_seek_data(fd) else pos
            for offset in range(pos, data, chunk):
                digest.update(zeros[: min(chunk, data - offset)])
            if data >= size:
                break
            end = os.lseek(fd, data, os.SEEK_HOLE)
            offset = data
            while offset < end:
                block = os.pread(fd, min(chunk, end - offset), offset)
                if not block:
                    raise OSError(f"{path} shrank while it was hashed")
                digest.update(block)
                offset += len(block)
            pos = end
    return digest.hexdigest()


def _has_seek_data(fd: int) -> bool:
    try:
        os.lseek(fd, 0, os.SEEK_HOLE)
        return True
    except OSError:
        return False


def publish_file(format_name: str, partial: Path, final: Path) -> Artifact:
    checksum = final.with_name(f"{final.name}.sha256")
    checksum_partial = final.with_name(f".{checksum.name}.partial-{os.getpid()}")
    try:
        digest = sha256_file(partial)
        checksum_partial.write_text(f"{digest}  {final.name}\n")
        partial.rename(final)
        checksum_partial.rename(checksum)
    except BaseException:
        checksum_partial.unlink(missing_ok=True)
        raise
    return Artifact(format_name, final, digest, final.stat().st_size, checksum)


def publish_directory(format_name: str, partial: Path, final: Path) -> Artifact:
    """SHA256SUMS (`sha256sum -c` format) inside, then the rename; the artifact's digest is
    that of SHA256SUMS, which pins every file. A directory cannot replace a non-empty one in
    one rename: a previous build's is moved aside first and removed after."""
    files = sorted(p for p in partial.rglob("*") if p.is_file() and not p.is_symlink())
    sums = "".join(f"{sha256_file(p)}  {p.relative_to(partial).as_posix()}\n" for p in files)
    (partial / "SHA256SUMS").write_text(sums)
    size = sum(p.stat().st_size for p in files) + len(sums)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    replacing = final.exists() or final.is_symlink()
    if replacing:
        final.rename(old)
    try:
        partial.rename(final)
    except BaseException:
        if replacing:
            old.rename(final)
        raise
    if replacing:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    return Artifact(format_name, final, hashlib.sha256(sums.encode()).hexdigest(), size, final / "SHA256SUMS")


def publish_json(final: Path, data: object) -> None:
    """A JSON record beside an artifact, appearing whole under its name (or not at all)."""
    partial = partial_path(final)
    try:
        partial.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        partial.rename(final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def copy_tree(source: Path, target: Path) -> None:
    """Copy a tree to `target` (absent or an empty directory) through a temporary sibling, as
    `unpack DIR` and `convert -o dir:` publish theirs."""
    partial = target.with_name(f".{target.name}.partial")
    target.parent.mkdir(parents=True, exist_ok=True)  # as --output DIR does for artifacts
    run(["rm", "-rf", str(partial)])
    try:
        with step(f"copying into {target}"):
            run(["cp", "-a", "--reflink=auto", str(source), str(partial)])
            if target.exists():
                target.rmdir()
            partial.rename(target)
    except BaseException:
        run(["rm", "-rf", str(partial)])
        raise
