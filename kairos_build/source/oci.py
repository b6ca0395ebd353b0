"""Read OCI image layouts (a directory or a tar archive of one) and apply their layers.

Every blob is verified against its digest while it streams; nothing is loaded whole.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from kairos_build.errors import InputError
from kairos_build.source.unpack import apply_layer

INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_MAX_JSON = 4 << 20


class _DigestReader:
    """A read-only stream that hashes what passes through and checks it at the end."""

    def __init__(self, raw: IO[bytes], digest: str) -> None:
        algo, _, self.expected = digest.partition(":")
        if algo != "sha256" or len(self.expected) != 64:
            raise InputError(f"unsupported or malformed digest {digest!r}")
        self.raw = raw
        self.digest = digest
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        return data

    def verify(self) -> None:
        while self.read(1 << 20):
            pass
        if self.hash.hexdigest() != self.expected:
            raise InputError(f"blob {self.digest} is corrupt: its content hashes differently")


class ImageStore:
    """Blobs and index of an OCI layout, either a directory or a tar archive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        if path.is_dir():
            if not (path / "index.json").is_file():
                raise InputError(f"{path} is not an OCI layout (no index.json)")
        elif path.is_file():
            try:
                # Kept open for the store's lifetime (closed by close()): blobs stream from it.
                self._tar = tarfile.open(path, "r:*")  # noqa: SIM115
            except (tarfile.TarError, OSError) as exc:
                raise InputError(f"{path} is not a readable OCI archive: {exc}") from exc
        else:
            raise InputError(f"{path} does not exist or cannot be read")

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    @contextmanager
    def open_file(self, name: str) -> Iterator[IO[bytes]]:
        if self._tar is None:
            # Only opening is the input's fault: an OSError raised while the caller uses the
            # handle (a full disk under the rootfs) must reach the user as what it is.
            try:
                handle = (self.path / name).open("rb")
            except OSError as exc:
                raise InputError(f"{self.path}: cannot read {name}: {exc}") from exc
            with handle:
                yield handle
            return
        try:
            member = self._tar.getmember(name)
        except KeyError:
            try:
                member = self._tar.getmember(f"./{name}")
            except KeyError:
                raise InputError(f"{self.path}: archive has no {name}") from None
        data = self._tar.extractfile(member) if member.isreg() else None
        if data is None:
            raise InputError(f"{self.path}: {name} in the archive is not a regular file")
        yield data

    @contextmanager
    def open_blob(self, digest: str) -> Iterator[_DigestReader]:
        # Check before opening: the digest becomes a path, and "../x:..." would leave the layout
        # (and opening a FIFO or a device there could hang or have effects).
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
            raise InputError(f"unsupported or malformed digest {digest!r}")
        with self.open_file(f"blobs/{algo}/{hexdigest}") as raw:
            yield _DigestReader(raw, digest)

    def read_json(self, digest: str | None = None, name: str | None = None) -> dict[str, Any]:
        """A verified JSON blob by digest (or an unverified file such as index.json by name)."""
        if digest:
            with self.open_blob(digest) as reader:
                data = reader.read(_MAX_JSON + 1)
                reader.verify()
        else:
            with self.open_file(name or "index.json") as handle:
                data = handle.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise InputError(f"{self.path}: {digest or name} is too large for a JSON document")
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise InputError(f"{self.path}: {digest or name} is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise InputError(f"{self.path}: {digest or name} is not a JSON object")
        return parsed


def _pick_descriptor(
    store: ImageStore, manifests: list[dict[str, Any]], tag: str | None, platform: str
) -> dict[str, Any]:
    if tag:
        named = [
            m for m in manifests
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
        ]
        if not named:
            raise InputError(f"{store.path} has no image tagged {tag!r}")
        manifests = named
    os_name, _, arch = platform.partition("/")
    matching = [
        m for m in manifests
        if "platform" not in m
        or (m["platform"].get("os") == os_name and m["platform"].get("architecture") == arch)
    ]
    if not matching:
        raise InputError(f"{store.path} has no image for platform {platform}")
    if len(matching) > 1 and not tag:
        raise InputError(f"{store.path} holds several images", hint="name one as oci:PATH:TAG")
    return matching[0]


def _resolve_manifest(store: ImageStore, tag: str | None, platform: str) -> dict[str, Any]:
    index = store.read_json(name="index.json")
    descriptor = _pick_descriptor(store, index.get("manifests") or [], tag, platform)
    for _ in range(4):  # an index may point at a nested index (multi-platform images)
        document = store.read_json(digest=descriptor["digest"])
        if descriptor.get("mediaType") in INDEX_TYPES or "manifests" in document:
            descriptor = _pick_descriptor(store, document.get("manifests") or [], None, platform)
            continue
        return document
    raise InputError(f"{store.path}: image indexes nest too deeply")


def _decompressed(reader: _DigestReader) -> IO[bytes]:
    """Undo the layer's compression, told by its first bytes rather than its media type."""
    head = reader.read(4)
    rest = _Prefixed(head, reader)
    # The readers only need read(); cast so the standard library's stubs accept them.
    stream = cast(IO[bytes], rest)
    if head[:2] == b"\x1f\x8b":
        return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    if head == b"\x28\xb5\x2f\xfd":
        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(stream))
    return stream


class _Prefixed:
    """A stream with some already-read bytes put back in front."""

    def __init__(self, head: bytes, tail: _DigestReader) -> None:
        self.head = head
        self.tail = tail

    def read(self, size: int = -1) -> bytes:
        if self.head:
            if size < 0:
                data, self.head = self.head + self.tail.read(), b""
                return data
            data, self.head = self.head[:size], self.head[size:]
            return data if len(data) == size else data + self.tail.read(size - len(data))
        return self.tail.read(size)


def image_config_digest(path: Path, tag: str | None, platform: str = "linux/amd64") -> str:
    """The config digest of the selected image: its identity, used as the cache key."""
    store = ImageStore(path)
    try:
        digest = _resolve_manifest(store, tag, platform)["config"]["digest"]
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: the image manifest has no config") from exc
    finally:
        store.close()
    return str(digest)


def unpack_image(path: Path, tag: str | None, target: Path, platform: str = "linux/amd64") -> None:
    """Apply every layer of the selected image, in order, onto the empty directory `target`."""
    store = ImageStore(path)
    try:
        manifest = _resolve_manifest(store, tag, platform)
        layers = manifest.get("layers")
        if not isinstance(layers, list):
            raise InputError(f"{path}: the image manifest lists no layers")
        for number, layer in enumerate(layers, 1):
            name = f"{number}/{len(layers)} ({str(layer.get('digest', '?'))[:19]})"
            with store.open_blob(str(layer.get("digest"))) as reader:
                try:
                    apply_layer(_decompressed(reader), target, name)
                except (InputError, EOFError, zlib.error, gzip.BadGzipFile,
                        zstandard.ZstdError) as exc:
                    # A blob that hashes wrong explains any of these best: verify() says so.
                    # Other OSErrors are the host's (a full disk), not the image's: not caught.
                    reader.verify()
                    if isinstance(exc, InputError):
                        raise
                    raise InputError(f"layer {name} of {path} is corrupt: {exc}") from exc
                reader.verify()
    finally:
        store.close()
