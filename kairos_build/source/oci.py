"""Read OCI image layouts (a directory or a tar archive of one) and apply their layers.

Every blob is verified against its digest while it streams; nothing is loaded whole.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any

from kairos_build.core.errors import InputError
from kairos_build.source.image import (
    DigestReader,
    Image,
    apply_image,
    check_digest,
    manifest_config_digest,
    manifest_layers,
    resolve_manifest,
)

_MAX_JSON = 4 << 20


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
    def open_blob_raw(self, digest: str) -> Iterator[IO[bytes]]:
        # Check before opening: the digest becomes a path, and "../x:..." would leave the layout
        # (and opening a FIFO or a device there could hang or have effects).
        algo, _, hexdigest = check_digest(digest).partition(":")
        with self.open_file(f"blobs/{algo}/{hexdigest}") as raw:
            yield raw

    @contextmanager
    def open_blob(self, digest: str) -> Iterator[DigestReader]:
        with self.open_blob_raw(digest) as raw:
            yield DigestReader(raw, digest)

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


def open_oci_image(path: Path, tag: str | None, platform: str = "linux/amd64") -> Image:
    """The selected image of an OCI layout or archive; its layers open the blobs when read."""
    store = ImageStore(path)
    try:
        index = store.read_json(name="index.json")
        manifest = resolve_manifest(
            lambda digest: store.read_json(digest=digest), index, tag, platform, str(path)
        )
        config_digest = manifest_config_digest(manifest, str(path))
    finally:
        store.close()
    return Image(config_digest, manifest_layers(manifest, blob_opener(path), str(path)), str(path))


def blob_opener(
    path: Path,
    wrap: Callable[[IO[bytes]], IO[bytes]] | None = None,
) -> Callable[[str], AbstractContextManager[IO[bytes]]]:
    """Opens one blob of the layout at `path` at a time, each with its own handle, so layers
    can be read long after the index was (`wrap` may translate the stream's errors)."""

    @contextmanager
    def open_blob(digest: str) -> Iterator[IO[bytes]]:
        store = ImageStore(path)
        try:
            with store.open_blob_raw(digest) as raw:
                yield wrap(raw) if wrap else raw
        finally:
            store.close()

    return open_blob


def image_config_digest(path: Path, tag: str | None, platform: str = "linux/amd64") -> str:
    """The config digest of the selected image: its identity, used as the cache key."""
    return open_oci_image(path, tag, platform).config_digest


def unpack_image(path: Path, tag: str | None, target: Path, platform: str = "linux/amd64") -> None:
    """Apply every layer of the selected image, in order, onto the empty directory `target`."""
    apply_image(open_oci_image(path, tag, platform), target)
