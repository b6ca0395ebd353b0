"""System images on the node: an upgrade source made into a tree (a folder, or an OCI image
whose layers go through the build's own safe unpack), and a tree made into an ext4 image."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

from kairos_build.agent.system import NodeError, replace_durably, run
from kairos_build.core.errors import KairosError
from kairos_build.disk.filesystems import grub_safe_features
from kairos_build.source.registry_api import INDEX_TYPES, RegistryClient, parse_image_name
from kairos_build.source.unpack import apply_layer

SOURCE_FORMS = (
    "dir:PATH, oci:DIR[:TAG], oci-archive:FILE (what `kairos-build convert` writes), "
    "docker://[REGISTRY/]IMAGE[:TAG] (a registry)"
)


def format_ext4(target: Path, label: str, tree: Path | None = None, size: int | None = None) -> None:
    """An ext4 grub can read on a partition, or as an image file of `size` bytes (sparse)
    holding `tree`."""
    version = run(["mkfs.ext4", "-V"])  # its version goes to stderr, which run() keeps
    argv = ["mkfs.ext4", "-q", "-F", "-L", label, "-O", grub_safe_features(version), "-m", "0"]
    if tree is not None:
        argv += ["-d", str(tree)]
    if size is not None:
        target.unlink(missing_ok=True)
    run([*argv, str(target), *([f"{size // 1024}k"] if size is not None else [])])


def make_ext4_image(tree: Path, image: Path, size: int, label: str) -> None:
    """`tree` as an ext4 filesystem image of `size` bytes (sparse), one grub can read."""
    format_ext4(image, label, tree, size)


def deploy_system(tree: Path, images: Path, size: int) -> None:
    """active.img and passive.img both made from `tree` (install, reset): each written under a
    temporary name and renamed in place. The old passive goes first (COS_STATE has room for
    three images, not four); a power cut then leaves the old active or the new one."""
    images.mkdir(parents=True, exist_ok=True)
    (images / "passive.img").unlink(missing_ok=True)
    make_ext4_image(tree, images / "transition.img", size, "COS_ACTIVE")
    run(["cp", "--sparse=always", str(images / "transition.img"), str(images / "passive.tmp")])
    replace_durably(images / "passive.tmp", images / "passive.img")
    replace_durably(images / "transition.img", images / "active.img")


class _Store:
    """The blobs of an OCI layout: a folder, or a tar archive of one (read in place)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        if path.is_file():
            try:
                self.tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed by close())
            except (tarfile.TarError, OSError) as exc:
                raise NodeError(f"{path} is not an OCI archive: {exc}") from exc
        elif not (path / "index.json").is_file():
            raise NodeError(f"{path} is not an OCI layout (no index.json)")

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        if self.tar is None:
            with (self.path / name).open("rb") as handle:
                yield handle
            return
        try:
            member = self.tar.getmember(name)
        except KeyError as exc:
            raise NodeError(f"{self.path} has no {name}") from exc
        extracted = self.tar.extractfile(member)
        if extracted is None:
            raise NodeError(f"{self.path}: {name} is not a file")
        with extracted:
            yield extracted

    def json(self, name: str) -> Any:
        with self.open(name) as handle:
            data = handle.read(4 << 20)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise NodeError(f"{self.path}: {name} is not JSON") from exc


class _Verified:
    """Reads a blob and hashes it; `check()` after the last read."""

    def __init__(self, handle: IO[bytes], digest: str) -> None:
        self.handle, self.digest, self.hash = handle, digest, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.hash.update(data)
        return data

    def check(self) -> None:
        while self.read(1 << 20):
            pass
        if f"sha256:{self.hash.hexdigest()}" != self.digest:
            raise NodeError(f"blob {self.digest} does not match its digest: the image is corrupt")


def _blob(digest: Any) -> str:
    if (
        not isinstance(digest, str)
        or not digest.startswith("sha256:")
        or len(digest) != 71
        or not all(c in "0123456789abcdef" for c in digest[7:])
    ):
        raise NodeError(f"{digest!r} is not a sha256 digest")
    return f"blobs/sha256/{digest[7:]}"


def _manifest(store: _Store, tag: str | None) -> dict[str, Any]:
    document = store.json("index.json")
    for _ in range(4):
        digest = _pick(document, tag, str(store.path))
        if digest is None:
            return dict(document)
        document, tag = store.json(_blob(digest)), None
    raise NodeError(f"{store.path}: image indexes nest too deeply")


def apply_blob(handle: IO[bytes], descriptor: dict[str, Any], root: Path) -> None:
    """One layer, streamed from `handle` through its digest check and the build's safe unpack."""
    digest = str(descriptor.get("digest"))
    verified = _Verified(handle, digest)
    peek = getattr(handle, "peek", None)
    head = peek(4)[:4] if peek is not None else b""
    kind = str(descriptor.get("mediaType", ""))
    if kind.endswith("zstd") or head.startswith(b"\x28\xb5\x2f\xfd"):
        raise NodeError(
            "zstd-compressed layers are not supported on the node yet",
            hint="use an image with uncompressed or gzip layers "
            "(`kairos-build convert -o oci-archive:` writes one)",
        )
    raw = cast(IO[bytes], verified)
    gzipped = kind.endswith("gzip") or head.startswith(b"\x1f\x8b")
    stream = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")) if gzipped else raw
    try:
        apply_layer(stream, root, digest[7:19])
    except KairosError as exc:
        raise NodeError(f"layer {digest[7:19]}: {exc.message}") from exc
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise NodeError(f"layer {digest[7:19]} is corrupt: it does not decompress ({exc})") from exc
    verified.check()


def _layers(manifest: dict[str, Any], where: str) -> list[dict[str, Any]]:
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, dict) for x in layers):
        raise NodeError(f"{where}: the image has no layers")
    return layers


def _pick(document: dict[str, Any], tag: str | None, where: str) -> str | None:
    """The digest of the amd64 manifest an index points at; None when `document` is one."""
    manifests = document.get("manifests")
    if not manifests and document.get("mediaType") not in INDEX_TYPES:
        return None
    if tag:
        manifests = [
            m
            for m in manifests or []
            if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag
        ]
    amd64 = [m for m in manifests or [] if (m.get("platform") or {}).get("architecture") in (None, "amd64")]
    if not amd64:
        raise NodeError(f"{where} has no amd64 image{f' tagged {tag}' if tag else ''}")
    return str(amd64[0].get("digest"))


def unpack_image(reference: Path, tag: str | None, root: Path) -> None:
    store = _Store(reference)
    try:
        layers = _layers(_manifest(store, tag), str(reference))
        root.mkdir(parents=True, exist_ok=True)
        for layer in layers:
            with store.open(_blob(layer.get("digest"))) as handle:
                apply_blob(handle, layer, root)
    finally:
        store.close()


def pull_image(name: str, root: Path, insecure: bool = False) -> None:
    """An image from a registry (docker's config file for a login), layer by layer straight
    into `root`: nothing of it is stored first."""
    try:
        parsed = parse_image_name(name)
        client = RegistryClient(parsed, name, (parsed.registry,) if insecure else ())
        document = json.loads(client.manifest(parsed.reference))
        for _ in range(4):
            digest = _pick(document, None, name)
            if digest is None:
                break
            document = json.loads(client.manifest(digest))
        layers = _layers(document, name)
        root.mkdir(parents=True, exist_ok=True)
        for layer in layers:
            digest = _blob(layer.get("digest")).rpartition("/")[2]
            with client.get(
                f"{parsed.repository}/blobs/sha256:{digest}", f"the registry has no blob sha256:{digest}"
            ) as response:
                apply_blob(cast(IO[bytes], response), layer, root)
    except KairosError as exc:
        if isinstance(exc, NodeError):
            raise
        raise NodeError(exc.message, hint=exc.hint) from exc
    except ValueError as exc:
        raise NodeError(f"{name}: the registry sent a manifest that is not JSON") from exc


def require_kairos(tree: Path, source: str) -> None:
    if not (tree / "etc" / "kairos-release").is_file():
        raise NodeError(
            f"{source} is not a Kairos system (no /etc/kairos-release)",
            hint="make it with `kairos-build convert ... -o oci-archive:FILE`",
        )


@contextlib.contextmanager
def source_tree(
    source: str, scratch: Path, insecure: bool = False, require: Callable[[Path, str], None] = require_kairos
) -> Iterator[Path]:
    """The tree of an upgrade source; an image is unpacked under `scratch` (removed after).
    `oci:NAME` that is no path here is a registry image, as Kairos reads it. `require` refuses
    a tree that is not what the upgrade takes (default: a Kairos system)."""
    kind, sep, rest = source.partition(":")
    registry = (
        source.removeprefix("docker://")
        if source.startswith("docker://")
        else rest
        if kind == "oci"
        and "/" in rest
        and not rest.startswith(("/", "."))
        and not Path(rest.rpartition(":")[0] or rest).exists()
        and not Path(rest).exists()
        else None
    )
    if registry is None and kind == "dir" and rest:
        require(Path(rest), source)
        yield Path(rest)
        return
    if registry is None and (kind not in ("oci", "oci-archive") or not rest):
        raise NodeError(f"upgrade source {source!r} is not one this node reads", hint=f"use {SOURCE_FORMS}")
    path, tag = Path(rest), None
    if registry is None and kind == "oci" and not path.exists() and ":" in rest:
        head, _, tag = rest.rpartition(":")
        path = Path(head)
    if registry is None and not path.exists():
        raise NodeError(f"the upgrade source {path} does not exist")
    tree = scratch / "tree"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        if registry is not None:
            pull_image(registry, tree, insecure)
        else:
            unpack_image(path, tag, tree)
        require(tree, source)
        yield tree
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
