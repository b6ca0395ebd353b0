"""What every image source shares: digest-checked streams, manifest selection, applying layers.

A source (an OCI layout or archive, a registry, a docker daemon's export) turns a reference into
an `Image`: its config digest (its identity, the cache key) and its layers, each able to open
its blob as a stream. `apply_image` then verifies and unpacks them in order. Nothing is read
into memory whole.
"""

from __future__ import annotations

import gzip
import hashlib
import queue
import re
import threading
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

import zstandard

from kairos_build.core.errors import InputError
from kairos_build.core.log import progress
from kairos_build.source.registry_api import INDEX_TYPES
from kairos_build.source.unpack import apply_layer

TAG_ANNOTATION = "org.opencontainers.image.ref.name"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def check_digest(digest: object) -> str:
    """A digest we can verify, checked before it is used as a path or in a URL."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InputError(f"unsupported or malformed digest {digest!r}")
    return digest


class DigestReader:
    """A read-only stream that hashes what passes through and checks it at the end."""

    def __init__(
        self,
        raw: _Reads,
        digest: str,
        on_read: Callable[[int], object] | None = None,
    ) -> None:
        self.expected = check_digest(digest).partition(":")[2]
        self.raw = raw
        self.digest = digest
        self.hash = hashlib.sha256()
        self.on_read = on_read

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        if self.on_read is not None:
            self.on_read(len(data))
        return data

    def verify(self) -> None:
        while self.read(1 << 20):
            pass
        if self.hash.hexdigest() != self.expected:
            raise InputError(f"blob {self.digest} is corrupt: its content hashes differently")


class _Reads(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Prefixed:
    """A stream with some already-read bytes put back in front."""

    def __init__(self, head: bytes, tail: _Reads) -> None:
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


def decompressed(reader: _Reads) -> IO[bytes]:
    """Undo a layer's compression, told by its first bytes rather than its media type."""
    head = reader.read(4)
    # The readers only need read(); cast so the standard library's stubs accept them.
    stream = cast(IO[bytes], _Prefixed(head, reader))
    if head[:2] == b"\x1f\x8b":
        return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    if head == b"\x28\xb5\x2f\xfd":
        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(stream))
    return stream


def select_descriptor(
    manifests: list[dict[str, Any]],
    tag: str | None,
    platform: str,
    where: str,
) -> dict[str, Any]:
    """Pick one entry of an image index: by tag annotation, then by platform (os/arch[/variant])."""
    if tag:
        manifests = [m for m in manifests if m.get("annotations", {}).get(TAG_ANNOTATION) == tag]
        if not manifests:
            raise InputError(f"{where} has no image tagged {tag!r}")
    os_name, _, arch = platform.partition("/")
    arch, _, variant = arch.partition("/")
    matching = [
        m
        for m in manifests
        if "platform" not in m
        or (
            m["platform"].get("os") == os_name
            and m["platform"].get("architecture") == arch
            and (not variant or m["platform"].get("variant") == variant)
        )
    ]
    if not matching:
        found = sorted(
            {
                f"{m['platform'].get('os')}/{m['platform'].get('architecture')}"
                for m in manifests
                if isinstance(m.get("platform"), dict)
            }
        )
        raise InputError(
            f"{where} has no image for platform {platform}",
            hint=f"it has: {', '.join(found) or 'none'}; choose with --platform",
        )
    if len(matching) > 1 and not tag:
        raise InputError(f"{where} holds several images", hint="name one with :TAG")
    return matching[0]


def resolve_manifest(
    read_json: Callable[[str], dict[str, Any]],
    top: dict[str, Any],
    tag: str | None,
    platform: str,
    where: str,
) -> dict[str, Any]:
    """Follow an index (possibly nested, as multi-platform images are) down to one manifest.

    `read_json(digest)` returns a verified JSON blob; `top` is the index or manifest to start at.
    """
    document = top
    for _ in range(5):
        if "manifests" not in document and document.get("mediaType") not in INDEX_TYPES:
            return document
        descriptor = select_descriptor(document.get("manifests") or [], tag, platform, where)
        tag = None  # tags only annotate the top index
        document = read_json(check_digest(descriptor.get("digest")))
    raise InputError(f"{where}: image indexes nest too deeply")


@dataclass(frozen=True)
class Layer:
    """One layer: what to call it in messages, its digest, and how to open its blob.

    `uncompressed` marks digests of the uncompressed tar (docker save's diff_ids) rather than
    of the blob as stored.
    """

    digest: str
    open: Callable[[], AbstractContextManager[IO[bytes]]]
    size: int | None = None
    uncompressed: bool = False


@dataclass(frozen=True)
class Image:
    config_digest: str
    layers: tuple[Layer, ...]
    description: str


def manifest_config_digest(manifest: dict[str, Any], where: str) -> str:
    """The config digest a manifest names: the image's identity."""
    config = manifest.get("config")
    if not isinstance(config, dict):
        raise InputError(f"{where}: the image manifest has no config")
    return check_digest(config.get("digest"))


def manifest_layers(
    manifest: dict[str, Any], opener: Callable[[str], AbstractContextManager[IO[bytes]]], where: str
) -> tuple[Layer, ...]:
    """The layers of an OCI or docker v2 manifest, each opened through `opener(digest)`."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise InputError(f"{where}: the image manifest lists no layers")
    found = []
    for layer in layers:
        digest = check_digest(layer.get("digest") if isinstance(layer, dict) else None)
        size = layer.get("size")
        found.append(
            Layer(
                digest,
                lambda d=digest: opener(d),  # type: ignore[misc]
                size if isinstance(size, int) else None,
            )
        )
    return tuple(found)


class _Prefetcher:
    """Reads a stream ahead in a thread, so decompression and hashing (which release the GIL
    in zlib, zstd and hashlib) overlap with writing files; with two cores this took about a
    fifth off unpacking a Debian image. Errors of the reading thread surface at read()."""

    _CHUNK = 256 << 10
    _DEPTH = 8  # chunks buffered at most: memory stays bounded whatever the layer's size

    def __init__(self, stream: _Reads) -> None:
        self.stream = stream
        self.queue: queue.Queue[bytes | BaseException] = queue.Queue(self._DEPTH)
        self.stop = threading.Event()
        self.buffer = b""
        self.offset = 0
        self.done = False
        self.thread = threading.Thread(target=self._fill, daemon=True)
        self.thread.start()

    def _fill(self) -> None:
        item: bytes | BaseException
        while not self.stop.is_set():
            try:
                item = self.stream.read(self._CHUNK)
            except BaseException as exc:  # handed to the reader, raised there
                item = exc
            while not self.stop.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def read(self, size: int = -1) -> bytes:
        # tarfile asks for small pieces: serve them from the current chunk by offset rather
        # than slicing the rest of it anew each time.
        parts = []
        wanted = size
        while wanted != 0:
            if self.offset >= len(self.buffer):
                if self.done:
                    break
                item = self.queue.get()
                if isinstance(item, BaseException):
                    self.done = True
                    raise item
                self.done = not item
                self.buffer, self.offset = item, 0
                continue
            end = len(self.buffer) if wanted < 0 else min(len(self.buffer), self.offset + wanted)
            parts.append(self.buffer[self.offset : end])
            if wanted > 0:
                wanted -= end - self.offset
            self.offset = end
        return b"".join(parts)

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue) and wait for it."""
        self.stop.set()
        self.thread.join()


def _apply_one(
    layer: Layer,
    name: str,
    target: Path,
    where: str,
    on_read: Callable[[int], object],
) -> None:
    with layer.open() as raw:
        if layer.uncompressed:  # docker save: the digest is of the tar after decompression
            checked = DigestReader(decompressed(raw), layer.digest, on_read)
            stream: _Reads = checked
        else:
            checked = DigestReader(raw, layer.digest, on_read)
            stream = decompressed(checked)
        ahead = _Prefetcher(stream)
        try:
            apply_layer(cast(IO[bytes], ahead), target, name)
            ahead.read()  # the rest (tar padding): the thread has then read the whole blob
        except (InputError, EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError) as exc:
            # A blob that hashes wrong explains any of these best: verify() says so. Other
            # OSErrors are the host's (a full disk), not the image's: not caught.
            ahead.close()
            checked.verify()
            if isinstance(exc, InputError):
                raise
            raise InputError(f"layer {name} of {where} is corrupt: {exc}") from exc
        finally:
            ahead.close()
        checked.verify()


def apply_image(image: Image, target: Path) -> None:
    """Verify and apply every layer, in order, onto the empty directory `target`."""
    total = sum(layer.size or 0 for layer in image.layers) or None
    with progress(total, f"unpacking {image.description}") as bar:
        for number, layer in enumerate(image.layers, 1):
            name = f"{number}/{len(image.layers)} ({layer.digest[:19]})"
            _apply_one(layer, name, target, image.description, bar.update)
