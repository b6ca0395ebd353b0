"""Write a converted rootfs as a container image: an OCI layout or archive, a docker archive,
or straight into a docker daemon. This is what users `FROM` in their Dockerfiles."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from kairos_build import __version__
from kairos_build.config.buildconfig import BuildConfig
from kairos_build.core.errors import BuildError
from kairos_build.core.tools import require_tool

_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def write_layer(rootfs: Path, output: Path, epoch: int) -> str:
    """The rootfs as one uncompressed layer tar; returns its digest (the diff_id).

    GNU tar, not Python's tarfile: tarfile drops xattrs, and file capabilities (ping's
    cap_net_raw) must survive. Names sorted, numeric owners, no atime/ctime and no time after
    `epoch`, so the same tree gives the same bytes on any day.
    """
    argv = [
        require_tool("tar"),
        "--create",
        "--file=-",
        "--format=pax",
        "--sort=name",
        f"--mtime=@{epoch}",
        "--clamp-mtime",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        f"--directory={rootfs}",
        ".",
    ]
    digest = hashlib.sha256()
    with (
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc,
        output.open("wb") as out,
    ):
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
        errors = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise BuildError(f"tar of the converted rootfs failed: {errors.strip()[-2000:]}")
    return f"sha256:{digest.hexdigest()}"


def image_config(config: BuildConfig, diff_id: str, epoch: int) -> dict[str, Any]:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    labels = {
        "io.kairos.flavor": config.flavor.name,
        "io.kairos.version": config.version,
        "io.kairos.variant": config.variant,
        "io.kairos.model": config.model,
        "org.opencontainers.image.created-by": f"kairos-build {__version__}",
    }
    return {
        "architecture": config.arch,
        "os": "linux",
        "created": created,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": f"kairos-build convert ({config.flavor.name})"}],
    }


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_oci_layout(layout: Path, layer: Path, diff_id: str, config: dict[str, Any], tag: str) -> None:
    """An OCI image layout at `layout` (a new directory); the layer file is moved into it."""
    (layout / "blobs/sha256").mkdir(parents=True)
    layer_size = layer.stat().st_size
    shutil.move(str(layer), layout / "blobs/sha256" / diff_id.removeprefix("sha256:"))
    config_ref = _blob(layout, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": _OCI_MANIFEST,
        "config": {"mediaType": _OCI_CONFIG, **config_ref},
        "layers": [{"mediaType": _OCI_LAYER, "digest": diff_id, "size": layer_size}],
    }
    manifest_ref = _blob(layout, json.dumps(manifest, sort_keys=True).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": _OCI_MANIFEST,
                **manifest_ref,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))


def write_docker_archive(
    archive: Path, layer: Path, diff_id: str, config: dict[str, Any], name: str, epoch: int
) -> None:
    """A `docker save` (legacy format) tarball that every docker version can `docker load`."""
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = f"{diff_id.removeprefix('sha256:')}/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [name], "Layers": [layer_name]}]
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in ((config_name, config_bytes), ("manifest.json", json.dumps(manifest).encode())):
            info = _pinned(tarfile.TarInfo(member), epoch)
            info.size = len(data)
            tar.addfile(info, _BytesReader(data))
        tar.add(layer, arcname=layer_name, filter=lambda info: _pinned(info, epoch))


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        chunk, self.data = (self.data, b"") if size < 0 else (self.data[:size], self.data[size:])
        return chunk


def tar_directory(directory: Path, archive: Path, epoch: int) -> None:
    """`directory` as a tar with sorted names, root owner and every date `epoch`."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(
                path,
                arcname=str(path.relative_to(directory)),
                recursive=False,
                filter=lambda info: _pinned(info, epoch),
            )


def _pinned(info: tarfile.TarInfo, epoch: int) -> tarfile.TarInfo:
    """A member with nothing of the build host in it: root owner, no names, date `epoch`."""
    info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
    return info


def scratch(parent: Path) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory beside the output, so the final rename stays on one filesystem."""
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=parent, prefix=".kairos-convert-")
