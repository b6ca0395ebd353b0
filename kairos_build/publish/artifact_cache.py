"""Finished artifacts, kept by everything that shapes them: a rebuild with nothing changed
keeps (or copies out) the previous result instead of writing it again.

The entry holds a hard link to the published artifact, no copy, so storing costs nothing. A
link shares its data with the output file: if someone writes into the output (a raw disk
booted by QEMU, a hand edit), the entry changes too. So the entry records the size and
modification time it was stored with and counts only while both still match; a write
through either name moves the mtime and the artifact is simply built again.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib.util
import json
import os
import shutil
from functools import cache as memoize
from pathlib import Path
from typing import Any

from kairos_build import __version__
from kairos_build.core.cache import cache_key, hash_tree
from kairos_build.core.data import data_dir
from kairos_build.core.log import log
from kairos_build.core.tools import run
from kairos_build.exporters.base import ExportContext, Exporter

KIND = "artifact"
# A cached artifact is copied out with cp (a reflink where it can, holes kept).
TOOLS = ("cp",)
_FILE = "artifact"
_RECORD = "record.json"


@dataclasses.dataclass(frozen=True)
class Published:
    """An artifact file as it was published: enough to tell if it is still the same."""

    sha256: str
    size: int
    mtime_ns: int


def artifact_key(exporter: Exporter, context: ExportContext) -> str:
    """The converted rootfs, every setting, our code and templates, the host tools used."""
    return cache_key(
        KIND,
        format=exporter.name,
        rootfs=context.rootfs_key,
        epoch=context.epoch,
        config=_config_record(context.config),
        code=code_digest(),
        plugin=_plugin_digest(type(exporter).__module__),
        templates=hash_tree(data_dir("templates")),
        tool=__version__,
        host=_host_record(exporter),
    )


def kept_output(context: ExportContext, key: str, final: Path) -> Published | None:
    """The published `final` when it is still exactly what this build would write: it is the
    cached entry itself (same inode), untouched since, with its checksum file beside it."""
    entry = _valid_entry(context, key)
    if entry is None or not final.is_file() or not final.with_name(f"{final.name}.sha256").is_file():
        return None
    path, published = entry
    if not os.path.samefile(path, final):
        return None
    log.info("  %s is unchanged (same inputs as the build that wrote it)", final.name)
    return published


def copy_cached(context: ExportContext, key: str, partial: Path) -> bool:
    """Copy the cached artifact to `partial` (reflink or in-kernel copy, holes kept); False
    when there is none."""
    with context.cache.locked(KIND, key):  # a prune waits until the copy is done
        entry = _valid_entry(context, key)
        if entry is None:
            return False
        log.info("  reusing the cached artifact %s", key[:12])
        run(["cp", "--reflink=auto", "--sparse=always", str(entry[0]), str(partial)])
    return True


def store(context: ExportContext, key: str, final: Path, sha256: str) -> None:
    """Keep the published file `final` as the cache entry: a hard link, so it costs no space
    while the output exists. Where no link can be made (the cache on another filesystem),
    nothing is kept: a copy of every artifact would double the disk a build uses."""
    if not final.is_file() or final.is_symlink():
        return  # directory artifacts (netboot) are rebuilt: they are small

    def make(target: Path) -> None:
        os.link(final, target / _FILE)
        st = (target / _FILE).stat()
        record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        (target / _RECORD).write_text(json.dumps(record))

    try:
        context.cache.get_or_make(KIND, key, make, refresh=True)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        log.debug("  not keeping %s in the cache: %s", final.name, exc.strerror)


def _valid_entry(context: ExportContext, key: str) -> tuple[Path, Published] | None:
    entry = context.cache.path(KIND, key)
    try:
        published = Published(**json.loads((entry / _RECORD).read_text()))
        st = (entry / _FILE).stat()
    except (OSError, ValueError, TypeError):
        return None
    if (st.st_size, st.st_mtime_ns) != (published.size, published.mtime_ns):
        log.debug("  the cached artifact %s was written to since it was stored", key[:12])
        return None
    return entry / _FILE, published


def _config_record(config: Any) -> dict[str, Any]:
    """Every setting of the build but where it writes; files given by path by their content."""
    record: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in ("output_dir", "cache_dir", "settings", "fresh_artifact"):
            continue  # where it writes; the settings as given (the fields hold their values)
        if field.name == "flavor":
            value = value.source.read_text()
        elif isinstance(value, Path):
            value = hash_tree(value) if value.is_dir() else _file_digest(value)
        record[field.name] = value
    return record


def _file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@memoize
def code_digest() -> str:
    """Our own sources: an exporter changed in a checkout must not reuse an older result.
    Only the .py files: __pycache__ changes when Python compiles them."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent  # kairos_build/
    for path in sorted(package.rglob("*.py")):
        digest.update(f"{path.relative_to(package)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@memoize
def _plugin_digest(module: str) -> str | None:
    """A plugin's own sources (the top-level package or module its exporter comes from): a
    plugin upgraded must not reuse what its older version built. None for our own exporters,
    which code_digest covers."""
    top = module.partition(".")[0]
    if top == __name__.partition(".")[0]:
        return None
    origin = importlib.util.find_spec(top)
    if origin is None or origin.origin is None:
        return None
    source = Path(origin.origin)
    files = sorted(source.parent.rglob("*.py")) if source.name == "__init__.py" else [source]
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(source.parent)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _host_record(exporter: Exporter) -> list[tuple[str, int, int]]:
    """The host programs and files the exporter drives, by size and mtime: a package
    upgrade replaces them and so changes the key."""
    paths = [shutil.which(tool) or tool for tool in exporter.tools] + list(exporter.files)
    record = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        record.append((path, st.st_size, st.st_mtime_ns))
    return record
