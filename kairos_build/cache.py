"""Content-addressed store of build intermediates: a key is the hash of everything that made it.

An entry is built under a temporary name and renamed into place when complete, so a crash or
Ctrl-C never leaves a half-written entry; an exclusive lock per key keeps two builds from
making the same entry at once (the second waits, then reuses the first one's result).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kairos_build.log import log


def default_cache_dir() -> Path:
    if env := os.environ.get("KAIROS_BUILD_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kairos-build"


def cache_key(kind: str, **inputs: Any) -> str:
    """A stable key: sha256 of the kind and the inputs as canonical JSON."""
    blob = json.dumps({"kind": kind, **inputs}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def hash_tree(root: Path) -> str:
    """A fingerprint of a directory tree (paths, types, modes, sizes, link targets, contents).

    Used for data we ship (overlays/, templates/) so editing a framework file changes the key.
    """
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(Path(dirpath, d))]):
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            digest.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                with path.open("rb") as handle:  # streamed: user folders may hold big files
                    digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    key: str
    path: Path

    def size(self) -> int:
        if not self.path.is_dir() or self.path.is_symlink():
            return self.path.lstat().st_size
        return sum(p.lstat().st_size for p in self.path.rglob("*") if not p.is_dir())


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    @contextmanager
    def _lock(self, kind: str, key: str) -> Iterator[None]:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{kind}-{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_or_make(
        self, kind: str, key: str, make: Callable[[Path], None], *, refresh: bool = False
    ) -> Path:
        """Return the entry `kind/key`, calling `make(tmpdir)` to create it when missing.

        `make` fills an empty directory; it becomes the entry only if `make` returns.
        """
        final = self.path(kind, key)
        with self._lock(kind, key):
            if final.is_dir() and not refresh:
                log.info("  reusing cached %s %s", kind, key[:12])
                os.utime(final)  # last use, for `cache prune --older-than`
                return final
            tmp = final.parent / f".tmp-{key}-{os.getpid()}"
            _remove_tree(tmp)
            tmp.mkdir(parents=True)
            try:
                make(tmp)
            except BaseException:
                # The original error (or Ctrl-C) is what the user must see; a cleanup that
                # fails leaves a .tmp entry that prune_partial removes on the next run.
                try:
                    _remove_tree(tmp)
                except OSError as exc:
                    log.warning("could not remove the partial cache entry %s: %s", tmp, exc)
                raise
            if final.exists():
                old = final.parent / f".old-{key}-{os.getpid()}"
                final.rename(old)
                _remove_tree(old)
            tmp.rename(final)
            return final

    def entries(self) -> list[CacheEntry]:
        """Every complete entry: rootfs, converted, squashfs dirs; blobs; resolved refs."""
        found = []
        for kind_dir in sorted(self.root.glob("*")):
            if not kind_dir.is_dir() or kind_dir.name in ("locks", "work"):
                continue
            # The blob store nests by algorithm (blobs/sha256/HEX), like an OCI layout.
            parents = sorted(kind_dir.iterdir()) if kind_dir.name == "blobs" else [kind_dir]
            for parent in parents:
                for entry in sorted(parent.iterdir()):
                    if not entry.name.startswith("."):
                        found.append(CacheEntry(kind_dir.name, entry.name, entry))
        return found

    def prune(self, older_than_days: float | None) -> list[CacheEntry]:
        """Remove entries not used for `older_than_days` (all with None); return them.

        Each entry is removed under its lock, so a build using it is never pulled from under.
        """
        limit = None if older_than_days is None else time.time() - older_than_days * 86400
        removed = []
        for entry in self.entries():
            if limit is not None and entry.path.lstat().st_mtime > limit:
                continue
            with self._lock(entry.kind, entry.key):
                _remove_tree(entry.path)
            removed.append(entry)
        self.prune_partial()
        return removed

    def prune_partial(self) -> None:
        """Remove leftovers of builds that were killed (not Ctrl-C'd: those clean up)."""
        for kind_dir in [*self.root.glob("*"), *self.root.glob("blobs/*")]:
            for leftover in list(kind_dir.glob(".tmp-*")) + list(kind_dir.glob(".old-*")):
                pid = leftover.name.rsplit("-", 1)[-1]
                if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    _remove_tree(leftover)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
