"""The one place that turns image layers into a directory, safely.

Layers are hostile input. Member names with `..` or an absolute path are refused; parents are
resolved with `resolve_in`, so a symlink planted by an earlier layer (or earlier in the same
layer) cannot carry a write outside the rootfs; hardlinks may only point at regular files
inside the rootfs; device nodes are skipped (a rootfs needs none: /dev is mounted at boot).
OCI whiteouts delete what lower layers brought; opaque whiteouts empty a directory of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from typing import IO

from kairos_build.core.errors import HostileContentError, InputError
from kairos_build.core.rootfs import resolve_in

# The tool's logger, taken from logging rather than kairos_build.core.log (which needs tqdm): the
# node agent applies an upgrade image's layers with this module, on the image's own python3.
log = logging.getLogger("kairos-build")

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_MAX_SECONDS = (1 << 63) // 1_000_000_000  # an mtime in ns must fit the kernel's 64 bits


class _Layer:
    """State of one layer being applied: its name for messages, what it created so far."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.created: set[str] = set()
        # (path in the rootfs, (st_dev, st_ino) of the directory made, mtime in ns): set last.
        self.dir_times: list[tuple[str, tuple[int, int], int]] = []
        self.skipped_devices = 0
        self.is_root = os.geteuid() == 0

    def refuse(self, member: str, why: str) -> HostileContentError:
        return HostileContentError(f"layer {self.name}: member {member!r} {why}; refusing the image")


def _member_path(layer: _Layer, name: str) -> str:
    """The member's path relative to the rootfs top; refuses escapes."""
    pure = PurePosixPath(name)
    if pure.is_absolute():
        raise layer.refuse(name, "has an absolute path")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if ".." in parts:
        raise layer.refuse(name, "climbs out of the rootfs with '..'")
    return "/".join(parts)


def _clear(path: Path) -> None:
    """Remove whatever is at `path` (file, link or whole directory), never following links."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _hide_lower(layer: _Layer, directory: Path, rel: str) -> None:
    """Remove what lower layers put under `directory`, keeping what this layer wrote there."""
    for child in os.listdir(directory):
        child_rel = f"{rel}/{child}".lstrip("/")
        path = directory / child
        if child_rel not in layer.created:
            _clear(path)
        elif path.is_dir() and not path.is_symlink():
            # A directory this layer declared may still hold lower-layer children: hide them too.
            _hide_lower(layer, path, child_rel)


def _apply_whiteout(layer: _Layer, rel: str) -> None:
    parent_rel, _, base = rel.rpartition("/")
    target = base[len(WHITEOUT_PREFIX) :]
    if target in ("", ".", ".."):
        # `parent / ".."` would be the parent's parent: at the top, the rootfs's host parent.
        raise layer.refuse(rel, "is a whiteout naming no entry of its directory")
    try:
        parent = resolve_in(layer.root, parent_rel)
    except HostileContentError as exc:
        raise layer.refuse(rel, f"has an unusable parent directory ({exc})") from exc
    if not parent.is_dir():
        return
    if base == OPAQUE_WHITEOUT:
        # Opaque: hide everything lower layers put here, keep what this layer already wrote.
        _hide_lower(layer, parent, parent_rel)
        return
    _clear(parent / target)


def _set_metadata(layer: _Layer, path: Path, member: tarfile.TarInfo) -> None:
    if layer.is_root:
        if not (0 <= member.uid < 1 << 32 and 0 <= member.gid < 1 << 32):
            raise layer.refuse(member.name, f"has an impossible owner {member.uid}:{member.gid}")
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
    if not member.issym():
        os.chmod(path, member.mode & 0o7777)
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            raw = value.encode("utf-8", "surrogateescape")
            try:
                os.setxattr(path, key[len("SCHILY.xattr.") :], raw, follow_symlinks=False)
            except OSError as exc:
                log.debug("layer %s: xattr %s on %s not set: %s", layer.name, key, member.name, exc)
    if member.isdir():
        # Kept by name and identity, not host path: a later member may replace a parent with a
        # symlink, and the kernel would follow it out of the rootfs when the time is set.
        st = os.lstat(path)
        layer.dir_times.append((_member_path(layer, member.name), (st.st_dev, st.st_ino), _mtime_ns(member)))
    else:
        mtime = _mtime_ns(member)
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's mtime in nanoseconds, as the layer states it.

    Read from the PAX text when there is one: tarfile's float drops its last digits (so a file
    came out up to ~100 ns off what umoci sets), and int() dropped a directory's fraction.
    Values no filesystem can hold (NaN, infinite, beyond 64 bits) become 0, as tarfile makes
    an unparsable one: they would otherwise escape as ValueError/OverflowError.
    """
    try:
        seconds = Decimal(member.pax_headers.get("mtime", member.mtime))
    except InvalidOperation:
        return 0
    # Checked before int(): "1e999999999" would make int() build a billion-digit number.
    if not seconds.is_finite() or not -_MAX_SECONDS < seconds < _MAX_SECONDS:
        return 0
    return int(seconds * 1_000_000_000)


def _set_dir_time(layer: _Layer, rel: str, identity: tuple[int, int], mtime_ns: int) -> None:
    """Set a directory's time, if the very directory the layer made is still at `rel`."""
    try:
        path = resolve_in(layer.root, rel, follow_last=False)
        st = os.lstat(path)
    except (HostileContentError, FileNotFoundError):
        return  # a later member of the layer removed it or replaced a parent with a file
    if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == identity:
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def _hardlink_source(layer: _Layer, member: tarfile.TarInfo) -> Path:
    try:
        target_rel = _member_path(layer, member.linkname)
    except HostileContentError:
        # Name the hardlink itself: its target is no member, a message naming it would mislead.
        raise layer.refuse(member.name, f"is a hardlink out of the rootfs to {member.linkname!r}") from None
    try:
        source = resolve_in(layer.root, target_rel, follow_last=False)
    except HostileContentError as exc:
        raise layer.refuse(member.name, f"is a hardlink through an unusable path ({exc})") from exc
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        raise layer.refuse(member.name, f"is a hardlink to missing {member.linkname!r}") from None
    if not stat.S_ISREG(st.st_mode):
        raise layer.refuse(member.name, f"is a hardlink to non-file {member.linkname!r}")
    return source


def _apply_member(layer: _Layer, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    rel = _member_path(layer, member.name)
    if not rel:  # the layer's own "./" entry: the rootfs top itself
        return
    if rel.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
        _apply_whiteout(layer, rel)
        return
    try:
        # Resolve the member itself (its own last link left alone) so that mkdirs also creates
        # a missing parent: resolving just the parent would stop short of its last component.
        dest = resolve_in(layer.root, rel, follow_last=False, mkdirs=True)
    except (HostileContentError, OSError) as exc:
        raise layer.refuse(member.name, f"has an unusable parent directory ({exc})") from exc
    # Parents count as this layer's too: an opaque whiteout later in the layer must keep them.
    parts = rel.split("/")
    layer.created.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    if member.isdir():
        if not dest.is_dir() or dest.is_symlink():
            _clear(dest)
            os.mkdir(dest, 0o700)
    elif member.ischr() or member.isblk():
        layer.skipped_devices += 1
        return
    else:
        _clear(dest)
        if member.isreg():
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                data = tar.extractfile(member)
                if data is not None:
                    shutil.copyfileobj(data, out, 1 << 20)
        elif member.issym():
            if not member.linkname:
                # Linux has no empty symlinks (symlink(2) fails with ENOENT): an image bug, not
                # the host's, so say so rather than let a bare OSError out.
                raise layer.refuse(member.name, "is a symlink with an empty target")
            os.symlink(member.linkname, dest)
        elif member.islnk():
            os.link(_hardlink_source(layer, member), dest, follow_symlinks=False)
            return  # a hardlink shares the metadata of its source
        elif member.isfifo():
            os.mkfifo(dest, 0o600)
        else:
            raise layer.refuse(member.name, f"has an unsupported type {member.type!r}")
    _set_metadata(layer, dest, member)


def apply_layer(stream: IO[bytes], root: Path, name: str) -> None:
    """Apply one uncompressed layer tar, read as a stream, on top of `root`."""
    layer = _Layer(root, name)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            # next(), not iteration: iterating indexes tar.members, the list (undocumented,
            # not in the stubs) where tarfile keeps every member it read. Cleared as we go,
            # memory no longer grows with the layer (~0.5 KiB a member: 200,000 held 100 MiB).
            while (member := tar.next()) is not None:
                _apply_member(layer, tar, member)
                tar.members.clear()  # type: ignore[attr-defined]
    except tarfile.TarError as exc:
        raise InputError(f"layer {name} is not a valid tar archive: {exc}") from exc
    except EOFError as exc:
        raise InputError(f"layer {name} is truncated: {exc}") from exc
    # Directory times last: creating children above changed them. In tar order, so that a
    # directory listed twice ends with the later entry's time, as it does with its mode.
    for rel, identity, mtime in layer.dir_times:
        _set_dir_time(layer, rel, identity, mtime)
    if layer.skipped_devices:
        log.info("layer %s: skipped %d device nodes", name, layer.skipped_devices)
