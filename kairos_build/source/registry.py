"""Pull images straight from an OCI distribution registry (Docker Hub, quay.io, a local one).

No daemon and no third-party HTTP library: urllib speaks the registry API (registry_api.py). Blobs land in a
content-addressed store in the cache (`blobs/sha256/<hex>`), each verified before it is renamed
into place, so the store never holds a half-written or wrong blob. What a reference resolved to
is remembered under `refs/`, which is what `--pull missing|never` reuse without the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from kairos_build.core.cache import Cache
from kairos_build.core.errors import BuildError, InputError
from kairos_build.core.log import log, progress
from kairos_build.source.image import (
    Image,
    check_digest,
    manifest_layers,
    resolve_manifest,
)
from kairos_build.source.refs import PULL_POLICIES
from kairos_build.source.registry_api import (
    CHUNK,
    INDEX_TYPES,
    ImageName,
    RegistryClient,
    parse_image_name,
)


def _parse(data: bytes, where: str, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data.decode())
    except ValueError as exc:
        raise InputError(f"{where}: {what} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InputError(f"{where}: {what} is not a JSON object")
    return parsed


def _resolve(client: RegistryClient, name: ImageName, platform: str, where: str) -> tuple[bytes, bool]:
    """The image manifest for `platform` (following indexes) and whether an index was followed."""
    data = client.manifest(name.reference)
    top = _parse(data, where, "the manifest")
    if "manifests" not in top and top.get("mediaType") not in INDEX_TYPES:
        return data, False
    last = [data]

    def read_json(digest: str) -> dict[str, Any]:
        last[0] = client.manifest(digest)
        return _parse(last[0], where, f"manifest {digest}")

    resolve_manifest(read_json, top, None, platform, where)
    return last[0], True


def _blobs_of(manifest: dict[str, Any], where: str) -> list[tuple[str, int | None]]:
    """Config and layer digests (with sizes) of an image manifest, checked."""
    if manifest.get("schemaVersion") == 1:
        raise InputError(
            f"{where} uses the obsolete schema 1 manifest format",
            hint="rebuild or re-push it with a current docker, buildah or skopeo",
        )
    config, layers = manifest.get("config"), manifest.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise InputError(f"{where}: the manifest has no config or layers")
    found = []
    for item in [config, *layers]:
        size = item.get("size") if isinstance(item, dict) else None
        found.append(
            (
                check_digest(item.get("digest") if isinstance(item, dict) else None),
                size if isinstance(size, int) and size >= 0 else None,
            )
        )
    return found


def _blob_path(cache: Cache, digest: str) -> Path:
    return cache.root / "blobs" / "sha256" / check_digest(digest).partition(":")[2]


def _ref_path(cache: Cache, name: ImageName, platform: str) -> Path:
    key = f"{name.registry}/{name.repository}" + (f"@{name.digest}" if name.digest else f":{name.tag}")
    return cache.root / "refs" / f"{hashlib.sha256(f'{key}+{platform}'.encode()).hexdigest()}.json"


@contextmanager
def _atomic(final: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside `final`, renamed to it only when the block completes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    # Named .tmp-*-PID like the cache's own temporaries, so Cache.prune_partial knows them too.
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name[:16]}-", suffix=f"-{os.getpid()}", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_ref(path: Path) -> bytes | None:
    """The manifest a reference resolved to before, if the record is there and intact."""
    try:
        record = json.loads(path.read_text())
        data = record["manifest"].encode()
        if "sha256:" + hashlib.sha256(data).hexdigest() == record["manifest_digest"]:
            return bytes(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _download(client: RegistryClient, digest: str, size: int | None, final: Path, bar: Any) -> None:
    """Stream one blob into the store; it appears there only once complete and verified."""
    hasher, received = hashlib.sha256(), 0
    with (
        _atomic(final) as out,
        client.get(
            f"{client.name.repository}/blobs/{digest}",
            f"the registry lacks blob {digest} (the image is incomplete)",
        ) as response,
    ):
        while chunk := client.read(response, CHUNK):
            received += len(chunk)
            if size is not None and received > size:
                raise InputError(
                    f"{client.where}: blob {digest} is larger than its manifest says",
                    hint="the registry serves a corrupt image",
                )
            hasher.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
        if size is not None and received < size:
            raise BuildError(
                f"{client.where}: the download of blob {digest} stopped after {received} of {size} bytes",
                hint="the connection broke; try again",
            )
        if f"sha256:{hasher.hexdigest()}" != digest:
            raise InputError(
                f"{client.where}: blob {digest} from {client.name.registry} does not match its digest",
                hint="the registry or a proxy corrupted it; try again",
            )


def _remove_stale(cache: Cache) -> None:
    """Temporary files of pulls that were killed (their process is gone)."""
    for leftover in [*cache.root.glob("blobs/sha256/.tmp-*"), *cache.root.glob("refs/.tmp-*")]:
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            leftover.unlink(missing_ok=True)


def open_registry_image(
    name: str,
    cache: Cache,
    *,
    pull: str = "missing",
    platform: str = "linux/amd64",
    insecure_registries: tuple[str, ...] = (),
) -> Image:
    """The image `name` for `platform`, its blobs in the cache's blob store (pulled as needed).

    `pull` has docker's meaning: `missing` uses what an earlier pull left in the cache without
    asking the registry, `always` asks the registry what the tag means now (downloading only
    blobs not yet stored), `never` uses only the cache.
    """
    if pull not in PULL_POLICIES:
        raise InputError(f"unknown pull policy {pull!r}", hint=f"use one of {', '.join(PULL_POLICIES)}")
    parsed = parse_image_name(name)
    ref_file = _ref_path(cache, parsed, platform)
    data = _load_ref(ref_file) if pull != "always" else None
    manifest = _parse(data, name, "the cached manifest") if data is not None else None
    if manifest is None or not all(_blob_path(cache, d).is_file() for d, _ in _blobs_of(manifest, name)):
        if pull == "never":
            raise InputError(
                f"{name} ({platform}) is not in the cache and --pull never forbids pulling",
                hint="pull it once with --pull missing",
            )
        client = RegistryClient(parsed, name, insecure_registries)
        client.get("", f"{parsed.registry} does not offer the registry API").close()
        data, from_index = _resolve(client, parsed, platform, name)
        manifest = _parse(data, name, "the image manifest")
        wanted = [(d, s) for d, s in _blobs_of(manifest, name) if not _blob_path(cache, d).is_file()]
        _remove_stale(cache)
        with progress(sum(s or 0 for _, s in wanted) or None, f"pulling {name}") as bar:
            for digest, size in wanted:
                _download(client, digest, size, _blob_path(cache, digest), bar)
        record = {
            "image": str(parsed),
            "platform": platform,
            "manifest_digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "manifest": data.decode(),
        }
        with _atomic(ref_file) as out:
            out.write(json.dumps(record).encode())
        if not from_index:
            _warn_platform(cache, manifest, name, platform)
    else:
        log.info("  using %s from the cache (pull policy %s)", name, pull)
    for used in [ref_file, *(_blob_path(cache, d) for d, _ in _blobs_of(manifest, name))]:
        with suppress(OSError):
            os.utime(used)  # last use, for `cache prune --older-than`

    @contextmanager
    def open_blob(digest: str) -> Iterator[IO[bytes]]:
        try:
            handle = _blob_path(cache, digest).open("rb")
        except OSError as exc:
            raise InputError(
                f"{name}: blob {digest} is gone from the cache: {exc}",
                hint="pull it again with --pull always",
            ) from exc
        with handle:
            yield handle

    config = _blobs_of(manifest, name)[0][0]
    return Image(config, manifest_layers(manifest, open_blob, name), name)


def _warn_platform(cache: Cache, manifest: dict[str, Any], name: str, platform: str) -> None:
    """A single-platform image says its platform only in its config: warn when it differs."""
    try:
        config = json.loads(_blob_path(cache, manifest["config"]["digest"]).read_bytes())
        found = f"{config['os']}/{config['architecture']}"
    except (OSError, ValueError, KeyError, TypeError):
        return
    if found != platform and not platform.startswith(found + "/"):
        log.warning("warning: %s is a %s image, not %s", name, found, platform)
