"""Content-addressed store of build intermediates: a key is the hash of everything that made it.

An entry is built under a temporary name and renamed into place when complete, so a crash or
Ctrl-C never leaves a half-written entry; an exclusive lock per key keeps two builds from
making the same entry at once (the second waits, then reuses the first one's result).

A stage (conversion, squashfs, ...) names its inputs; their hash is the key, and they are kept
beside the entry (KIND/.inputs/KEY.json) so that a stage that runs again can say which input
changed since the entry it replaces.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kairos_build.core.log import log

PACKAGE_CACHE = "pkgcache"  # the kind under which shared package downloads live


def default_cache_dir() -> Path:
    if env := os.environ.get("KAIROS_BUILD_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kairos-build"


def cache_key(kind: str, **inputs: Any) -> str:
    """A stable key: sha256 of the kind and the inputs as canonical JSON.

    An input that is None is left out, so adding an optional input (one that is usually
    unset) keeps the keys of existing entries.
    """
    given = {name: value for name, value in inputs.items() if value is not None}
    return hashlib.sha256(_canonical({"kind": kind, **given}).encode()).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# Recorded inputs longer than this (a flavor file's text, a list of paths) are kept as their
# sha256: the record only has to tell whether they changed.
_RECORD_INLINE = 200


def recordable(inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs as JSON values, long ones replaced by `sha256:HEX` of their canonical JSON."""
    recorded = {}
    for name, value in inputs.items():
        text = _canonical(value)
        recorded[name] = (
            f"sha256:{hashlib.sha256(text.encode()).hexdigest()}"
            if len(text) > _RECORD_INLINE
            else json.loads(text)
        )
    return recorded


@dataclass(frozen=True)
class Stage:
    """One cached step of the pipeline.

    `name` is what the log calls it, `kind` the cache folder it fills, `inputs` everything
    that shapes its output (their hash is the key). `lineage` names the inputs that make an
    earlier entry "a previous version of this one": the log compares against the latest such
    entry. `prefix` starts the key, to keep `cache ls` readable.
    """

    name: str
    kind: str
    inputs: dict[str, Any]
    lineage: tuple[str, ...] = ()
    prefix: str = ""

    @property
    def key(self) -> str:
        return self.prefix + cache_key(self.kind, **self.inputs)


@dataclass(frozen=True)
class InputsRecord:
    """What made an entry, as stored in KIND/.inputs/KEY.json."""

    stage: str
    key: str
    inputs: dict[str, Any]
    made: float


def hash_tree(root: Path) -> str:
    """A fingerprint of a directory tree (paths, types, modes, sizes, link targets, contents).

    Used for data we ship (overlays/, templates/) so editing a framework file changes the key.
    A file is a tree of one.
    """
    digest = hashlib.sha256()
    if not root.is_dir() or root.is_symlink():
        digest.update(f"{root.lstat().st_mode:o}\0".encode())
        if root.is_symlink():
            digest.update(os.readlink(root).encode())
        else:
            with root.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        return digest.hexdigest()
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
        # Every entry this build asked for (kind, key), made or reused: a build manifest lists
        # the stages an artifact came from.
        self.used: list[tuple[str, str]] = []

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    @contextmanager
    def locked(self, kind: str, key: str) -> Iterator[None]:
        """Hold the entry `kind/key` while it is read: no prune removes it meanwhile."""
        with self._lock(kind, key):
            yield

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
        self,
        kind: str,
        key: str,
        make: Callable[[Path], object],
        *,
        refresh: bool = False,
        stage: Stage | None = None,
    ) -> Path:
        """Return the entry `kind/key`, calling `make(tmpdir)` to create it when missing.

        `make` fills an empty directory; it becomes the entry only if `make` returns. With
        `refresh`, it is made anew and replaces the entry. For a `stage`, the log says why it
        runs and its inputs are recorded beside the new entry.
        """
        final = self.path(kind, key)
        self.used.append((kind, key))
        with self._lock(kind, key):
            if final.is_dir() and not refresh:
                log.info("  reusing cached %s %s", kind, key[:12])
                os.utime(final)  # last use, for `cache prune --older-than`
                return final
            if stage is not None:
                log.info("  %s runs: %s", stage.name, self.why_stage_runs(stage, refresh))
                # Gone before the entry is, so a record never names a missing entry.
                self._record_path(kind, key).unlink(missing_ok=True)
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
            old = final.parent / f".old-{key}-{os.getpid()}"
            replacing = final.exists()
            if replacing:
                final.rename(old)
            tmp.rename(final)
            if replacing:  # after the new entry is in place: the gap without one stays short
                _remove_tree(old)
            os.utime(final)  # `make` may have copied an old date onto it (cp -a)
            if stage is not None:
                self._write_record(stage)
            return final

    def get_or_make_stage(
        self, stage: Stage, make: Callable[[Path], object], *, refresh: bool = False
    ) -> Path:
        """The entry of `stage` (keyed by the hash of its inputs), made when missing."""
        return self.get_or_make(stage.kind, stage.key, make, refresh=refresh, stage=stage)

    def why_stage_runs(self, stage: Stage, refresh: bool) -> str:
        """One phrase for the log: what differs from the latest entry of the same lineage."""
        if refresh:
            return "--no-cache"
        mine = recordable(stage.inputs)
        same_line = [
            r
            for r in self.records(stage.kind)
            if r.stage == stage.name and all(r.inputs.get(n) == mine.get(n) for n in stage.lineage)
        ]
        used = {r.key: self._last_used(stage.kind, r.key) for r in same_line}
        previous = max(same_line, key=lambda r: used[r.key], default=None)
        if previous is None:
            what = " and ".join(stage.lineage)
            return f"nothing cached for this {what} yet" if what else "nothing cached yet"
        names = list(dict.fromkeys([*mine, *previous.inputs]))
        changed = [n for n in names if mine.get(n) != previous.inputs.get(n)] or ["its inputs"]
        return (
            f"{', '.join(changed)} changed since the cached one "
            f"({previous.key[:12]}…, used {describe_age(time.time() - used[previous.key])} ago)"
        )

    def _last_used(self, kind: str, key: str) -> float:
        try:
            return self.path(kind, key).lstat().st_mtime
        except OSError:  # pruned meanwhile
            return 0.0

    def records(self, kind: str) -> list[InputsRecord]:
        """The recorded inputs of the complete entries of `kind` (unreadable ones skipped)."""
        found = []
        for path in sorted((self.root / kind / ".inputs").glob("*.json")):
            try:
                data = json.loads(path.read_text())
                record = InputsRecord(data["stage"], data["key"], data["inputs"], data["made"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if self.path(kind, record.key).exists():
                found.append(record)
        return found

    def _record_path(self, kind: str, key: str) -> Path:
        return self.root / kind / ".inputs" / f"{key}.json"

    def _write_record(self, stage: Stage) -> None:
        """Written under a temporary name and renamed: a reader never sees half a record."""
        path = self._record_path(stage.kind, stage.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        record = {
            "stage": stage.name,
            "key": stage.key,
            "inputs": recordable(stage.inputs),
            "made": time.time(),
        }
        partial.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        partial.rename(path)

    @contextmanager
    def package_cache(self, name: str, subdirs: tuple[str, ...] = ()) -> Iterator[Path]:
        """The download folder `pkgcache/NAME` shared by conversions, held by this build alone
        while it runs (a second build with the same NAME waits): a package manager expects
        to be the only one writing its downloads. A build killed half-way leaves only what the
        manager itself considers partial (apt's partial/), which it checks before use."""
        path = self.root / PACKAGE_CACHE / name
        with self._lock(PACKAGE_CACHE, name):
            for folder in (path, *(path / sub for sub in subdirs)):
                folder.mkdir(parents=True, exist_ok=True)
            os.utime(path)  # last use, for `cache prune --older-than`
            yield path

    @contextmanager
    def workdir(self) -> Iterator[Path]:
        """A scratch folder under ROOT/work, removed afterwards; named after this process so
        that prune_partial can remove it when a killed build could not."""
        work_root = self.root / "work"
        work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work_root, prefix=f"{os.getpid()}-") as work:
            yield Path(work)

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

    def prune(self, older_than_days: float | None, kinds: tuple[str, ...] = ()) -> list[CacheEntry]:
        """Remove entries not used for `older_than_days` (all with None), of `kinds` only when
        given; return them.

        Each entry is removed under its lock, so a build using it is never pulled from under.
        """
        limit = None if older_than_days is None else time.time() - older_than_days * 86400
        removed = []
        for entry in self.entries():
            if kinds and entry.kind not in kinds:
                continue
            if limit is not None and entry.path.lstat().st_mtime > limit:
                continue
            with self._lock(entry.kind, entry.key):
                self._record_path(entry.kind, entry.key).unlink(missing_ok=True)
                _remove_tree(entry.path)
            removed.append(entry)
        self.prune_partial()
        return removed

    def prune_partial(self) -> None:
        """Remove leftovers of builds that were killed (not Ctrl-C'd: those clean up): half
        entries and records, scratch folders, and records whose entry is gone."""
        kind_dirs = [*self.root.glob("*"), *self.root.glob("blobs/*"), *self.root.glob("*/.inputs")]
        for kind_dir in kind_dirs:
            for leftover in [*kind_dir.glob(".tmp-*"), *kind_dir.glob(".old-*"), *kind_dir.glob(".*.tmp-*")]:
                if pid_is_gone(leftover.name.rsplit("-", 1)[-1]):
                    _remove_tree(leftover)
        for scratch in self.root.glob("work/*"):
            if pid_is_gone(scratch.name.split("-", 1)[0]):
                _remove_tree(scratch)
        for record in self.root.glob("*/.inputs/*.json"):
            if not self.path(record.parent.parent.name, record.stem).exists():
                record.unlink(missing_ok=True)


def pid_is_gone(pid: str) -> bool:
    """Whether the process a leftover is named after has ended (a live one is still at work)."""
    return pid.isdigit() and not Path(f"/proc/{pid}").exists()


def describe_age(seconds: float) -> str:
    """'40 s', '12 min', '2 h', '3 days': how long ago, as a person says it."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
