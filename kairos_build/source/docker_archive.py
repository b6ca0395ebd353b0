"""Read `docker save` archives: the legacy layout (manifest.json) and docker 25+'s OCI layout.

Legacy archives name each layer by its diff_id (the sha256 of the uncompressed layer tar), so
layers are checked after decompression. Member names come from the archive and are untrusted:
only regular members (or links inside the archive leading to one) are ever opened, in place.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

from kairos_build.core.errors import HostileContentError, InputError
from kairos_build.source.image import (
    TAG_ANNOTATION,
    Image,
    Layer,
    check_digest,
    manifest_config_digest,
    manifest_layers,
    resolve_manifest,
)
from kairos_build.source.oci import ImageStore, blob_opener

_MAX_JSON = 4 << 20
_NAME_ANNOTATION = "io.containerd.image.name"
_HEX_NAME = re.compile(r"(?:^|/)([0-9a-f]{64})(?:\.json)?$")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def normalize_name(name: str) -> str:
    """docker's short form of a reference: no docker.io/ or library/, ':latest' when untagged."""
    for prefix in ("docker.io/", "index.docker.io/", "library/"):
        name = name.removeprefix(prefix)
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in last else f"{name}:latest"


def _tags_match(candidate: object, wanted: str) -> bool:
    return isinstance(candidate, str) and normalize_name(candidate) == normalize_name(wanted)


@contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the `with` below)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise InputError(
            f"{path} is not a readable docker archive: {exc}",
            hint="make one with `docker save IMAGE -o FILE`",
        ) from exc
    with tar:
        yield tar


class _TarStream:
    """A member's stream whose read errors (a truncated or damaged archive) are the input's."""

    def __init__(self, raw: IO[bytes], where: str) -> None:
        self.raw = raw
        self.where = where

    def read(self, size: int = -1) -> bytes:
        try:
            return self.raw.read(size)
        except _READ_ERRORS as exc:
            raise InputError(f"{self.where} is truncated or damaged: {exc}") from exc


class _Archive:
    """The member index of a docker archive, and safe lookups of untrusted member names."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with _open_tar(path) as tar:
            try:
                members = tar.getmembers()
            except _READ_ERRORS as exc:
                raise InputError(f"{path} is truncated or damaged: {exc}") from exc
        self.members = {posixpath.normpath(m.name): m for m in members if m.name}
        with path.open("rb") as handle:
            plain = not handle.read(6).startswith(_COMPRESSED_MAGIC)
        self.size = path.stat().st_size if plain else None

    def _clean(self, name: object) -> str:
        """A name from manifest.json as the member index keys it; refused if it may leave."""
        if not isinstance(name, str) or not name:
            raise InputError(f"{self.path}: malformed member name {name!r} in manifest.json")
        clean = posixpath.normpath(name)
        if posixpath.isabs(name) or ".." in name.split("/"):
            raise HostileContentError(f"{self.path}: member name {name!r} leaves the archive; refusing it")
        return clean

    def regular(self, name: object) -> tarfile.TarInfo:
        """The regular member `name` names, following links inside the archive (as docker
        writes for layers shared between images)."""
        clean = self._clean(name)
        for _ in range(8):
            member = self.members.get(clean)
            if member is None:
                raise InputError(
                    f"{self.path}: the archive has no {name}", hint="is it truncated? `docker save` it again"
                )
            if member.isreg():
                if self.size is not None and member.offset_data + member.size > self.size:
                    raise InputError(f"{self.path} is truncated: {name} is cut short")
                return member
            if not (member.issym() or member.islnk()):
                raise InputError(f"{self.path}: {name} in the archive is not a regular file")
            target = member.linkname
            base = posixpath.dirname(clean) if member.issym() else ""
            clean = posixpath.normpath(posixpath.join(base, target))
            if posixpath.isabs(target) or clean == ".." or clean.startswith("../"):
                raise HostileContentError(
                    f"{self.path}: {name} links to {target!r}, which leaves the archive; refusing it"
                )
        raise InputError(f"{self.path}: {name} is a chain of links that does not end")

    @contextmanager
    def open(self, name: object) -> Iterator[IO[bytes]]:
        member = self.regular(name)
        with _open_tar(self.path) as tar:
            data = tar.extractfile(member)
            assert data is not None  # a regular member always has data
            yield cast(IO[bytes], _TarStream(data, str(self.path)))

    def read_json(self, name: object) -> tuple[Any, bytes]:
        with self.open(name) as handle:
            data = handle.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise InputError(f"{self.path}: {name} is too large for a JSON document")
        try:
            return json.loads(data), data
        except ValueError as exc:
            raise InputError(f"{self.path}: {name} is not valid JSON: {exc}") from exc


def _pick_legacy(archive: _Archive, manifest: Any, tag: str | None) -> dict[str, Any]:
    entries = [e for e in manifest if isinstance(e, dict)] if isinstance(manifest, list) else []
    if not entries:
        raise InputError(f"{archive.path}: manifest.json lists no images")
    tags = sorted(t for e in entries for t in e.get("RepoTags") or [] if isinstance(t, str))
    if tag:
        entries = [e for e in entries if any(_tags_match(t, tag) for t in e.get("RepoTags") or [])]
        if not entries:
            raise InputError(
                f"{archive.path} has no image tagged {tag!r}", hint=f"it has: {', '.join(tags) or 'no tags'}"
            )
    if len({json.dumps(e.get("Config")) for e in entries}) > 1:
        raise InputError(
            f"{archive.path} holds several images", hint=f"name one of: {', '.join(tags) or 'no tags'}"
        )
    return entries[0]


def _check_platform(config: dict[str, Any], platform: str, where: str) -> None:
    os_name, _, arch = platform.partition("/")
    arch = arch.partition("/")[0]
    found = (config.get("os"), config.get("architecture"))
    if all(isinstance(f, str) for f in found) and found != (os_name, arch):
        raise InputError(
            f"{where} is for {found[0]}/{found[1]}, not the requested {platform}",
            hint="choose a matching image or --platform",
        )


def _open_legacy(archive: _Archive, tag: str | None, platform: str) -> Image:
    where = str(archive.path)
    entry = _pick_legacy(archive, archive.read_json("manifest.json")[0], tag)
    config_name = entry.get("Config")
    config, raw = archive.read_json(config_name)
    hexdigest = hashlib.sha256(raw).hexdigest()
    named = _HEX_NAME.search(str(config_name))
    if named and named.group(1) != hexdigest:
        raise InputError(f"{where}: image config {config_name} is corrupt: it hashes differently")
    if not isinstance(config, dict):
        raise InputError(f"{where}: image config {config_name} is not a JSON object")
    _check_platform(config, platform, where)
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    names = entry.get("Layers")
    if not isinstance(diff_ids, list) or not isinstance(names, list) or len(diff_ids) != len(names):
        raise InputError(f"{where}: the image's layers do not match its config's diff_ids")
    layers = []
    for diff_id, name in zip(diff_ids, names, strict=True):
        member = archive.regular(name)  # checked now: a bad name fails before any unpacking
        layers.append(
            Layer(check_digest(diff_id), partial(archive.open, name), member.size, uncompressed=True)
        )
    description = f"{where} ({tag})" if tag else where
    return Image(f"sha256:{hexdigest}", tuple(layers), description)


def _open_oci(path: Path, tag: str | None, platform: str) -> Image:
    """docker 25+: an OCI layout whose index names images as docker.io/library/NAME:TAG."""
    store = ImageStore(path)
    try:
        index = store.read_json(name="index.json")
        entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
        if tag:
            wanted = [
                m
                for m in entries
                if _tags_match(m.get("annotations", {}).get(_NAME_ANNOTATION), tag)
                or m.get("annotations", {}).get(TAG_ANNOTATION) == tag
            ]
            if not wanted:
                names = sorted(str(m.get("annotations", {}).get(_NAME_ANNOTATION)) for m in entries)
                raise InputError(f"{path} has no image tagged {tag!r}", hint=f"it has: {', '.join(names)}")
            entries = wanted
        if len({m.get("digest") for m in entries}) == 1:
            entries = entries[:1]  # one image under several names
        elif not tag:
            names = sorted(str(m.get("annotations", {}).get(_NAME_ANNOTATION)) for m in entries)
            raise InputError(f"{path} holds several images", hint=f"name one of: {', '.join(names)}")
        manifest = resolve_manifest(
            lambda digest: store.read_json(digest=digest), {"manifests": entries}, None, platform, str(path)
        )
        config_digest = manifest_config_digest(manifest, str(path))
        _check_platform(store.read_json(digest=config_digest), platform, str(path))
    finally:
        store.close()
    opener = blob_opener(path, lambda raw: cast(IO[bytes], _TarStream(raw, str(path))))
    description = f"{path} ({tag})" if tag else str(path)
    return Image(config_digest, manifest_layers(manifest, opener, str(path)), description)


def open_docker_archive(path: Path, tag: str | None = None, platform: str = "linux/amd64") -> Image:
    """The selected image of a `docker save` archive; its layers stream from it when read."""
    archive = _Archive(path)
    if "index.json" in archive.members:
        return _open_oci(path, tag, platform)
    if "manifest.json" in archive.members:
        return _open_legacy(archive, tag, platform)
    raise InputError(
        f"{path} is not a docker archive (no manifest.json or index.json)",
        hint="is it truncated? make one with `docker save IMAGE -o FILE`",
    )
