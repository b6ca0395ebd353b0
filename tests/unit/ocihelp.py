"""Build layer tars in memory and write OCI layouts (directory or archive) for the unit tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import zstandard

Member = tuple[tarfile.TarInfo, bytes | None]

MTIME = 1_600_000_000
# vfs_cap_data revision 2 as `setcap cap_net_raw+ep` writes it: magic|effective, then
# permitted/inheritable for capabilities 0-31 and 32-63 (CAP_NET_RAW is bit 13).
CAP_NET_RAW_EP = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)


def _info(name: str, kind: bytes, mode: int, uid: int, gid: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    return info


def reg(
    name: str,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
    xattrs: dict[str, bytes] | None = None,
) -> Member:
    info = _info(name, tarfile.REGTYPE, mode, uid, gid, mtime)
    info.size = len(data)
    if xattrs:
        # Raw bytes travel as surrogate escapes; BINARY tells tarfile to write them back as-is.
        info.pax_headers = {"hdrcharset": "BINARY"} | {
            f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape") for key, value in xattrs.items()
        }
    return info, data


def dir_(name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = MTIME) -> Member:
    return _info(name, tarfile.DIRTYPE, mode, uid, gid, mtime), None


def sym(name: str, target: str, *, uid: int = 0, gid: int = 0, mtime: int = MTIME) -> Member:
    info = _info(name, tarfile.SYMTYPE, 0o777, uid, gid, mtime)
    info.linkname = target
    return info, None


def hard(name: str, target: str) -> Member:
    info = _info(name, tarfile.LNKTYPE, 0o644, 0, 0, MTIME)
    info.linkname = target
    return info, None


def fifo(name: str, *, mode: int = 0o620) -> Member:
    return _info(name, tarfile.FIFOTYPE, mode, 0, 0, MTIME), None


def device(name: str, kind: bytes = tarfile.CHRTYPE) -> Member:
    info = _info(name, kind, 0o666, 0, 0, MTIME)
    info.devmajor, info.devminor = 1, 3
    return info, None


def whiteout(name: str) -> Member:
    """An OCI whiteout entry: an empty regular file, `dir/.wh.NAME` or `dir/.wh..wh..opq`."""
    return reg(name)


def layer_tar(*members: Member) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    assert kind == "none", kind
    return data


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    """Blobs and top-level index entries of an OCI layout, written out on demand."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: list[dict[str, Any]] = []

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = digest_of(data)
        self.blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(self, *layers: bytes, compression: str | list[str] = "gzip", label: str = "") -> dict[str, Any]:
        """Store an image (config, manifest, layers); returns the manifest's descriptor."""
        kinds = [compression] * len(layers) if isinstance(compression, str) else compression
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"test": label}},
                "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]},
            }
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": self.blob(config, "application/vnd.oci.image.config.v1+json"),
            "layers": [
                self.blob(
                    compress(layer, kind),
                    "application/vnd.oci.image.layer.v1.tar"
                    + {"gzip": "+gzip", "zstd": "+zstd", "none": ""}[kind],
                )
                for layer, kind in zip(layers, kinds, strict=True)
            ],
        }
        return self.blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")

    def index(self, *entries: dict[str, Any]) -> dict[str, Any]:
        """Store a nested image index over `entries`; returns its descriptor."""
        document = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": list(entries),
        }
        return self.blob(json.dumps(document).encode(), "application/vnd.oci.image.index.v1+json")

    def add(self, descriptor: dict[str, Any], *, tag: str | None = None, platform: str | None = None) -> None:
        """List a descriptor in the top-level index.json, optionally tagged or for a platform."""
        self.manifests.append(entry(descriptor, tag=tag, platform=platform))

    def config_digest(self, manifest: dict[str, Any]) -> str:
        return str(json.loads(self.blobs[manifest["digest"]])["config"]["digest"])

    def layer_digests(self, manifest: dict[str, Any]) -> list[str]:
        return [layer["digest"] for layer in json.loads(self.blobs[manifest["digest"]])["layers"]]

    def files(self) -> dict[str, bytes]:
        index = {"schemaVersion": 2, "manifests": self.manifests}
        files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": json.dumps(index).encode()}
        for digest, data in self.blobs.items():
            files["blobs/sha256/" + digest.removeprefix("sha256:")] = data
        return files

    def write_dir(self, path: Path) -> Path:
        for name, data in self.files().items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path

    def write_archive(self, path: Path, *, prefix: str = "") -> Path:
        """A tar of the layout; `prefix="./"` names members like `tar -C layout -cf x .` does."""
        with tarfile.open(path, "w") as tar:
            for name, data in self.files().items():
                info = tarfile.TarInfo(prefix + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path


def entry(
    descriptor: dict[str, Any], *, tag: str | None = None, platform: str | None = None
) -> dict[str, Any]:
    """A descriptor as an index lists it, with a ref.name annotation and/or a platform."""
    listed = dict(descriptor)
    if tag is not None:
        listed["annotations"] = {"org.opencontainers.image.ref.name": tag}
    if platform is not None:
        os_name, _, arch = platform.partition("/")
        listed["platform"] = {"os": os_name, "architecture": arch}
    return listed
