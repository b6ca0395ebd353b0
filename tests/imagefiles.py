"""OCI layouts of real trees for the integration tests, written by hand from the image spec
(not with kairos-build's code, so they can judge it), streaming from disk; and a reader of
files inside an ISO."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path


def tar_tree(tree: Path, output: Path) -> Path:
    """A layer tar of `tree` (PAX, so ownership, modes and xattrs survive)."""
    with tarfile.open(output, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(tree, arcname=".")
    return output


def write_oci_layout(layout: Path, layer: Path, tag: str) -> None:
    """A one-layer OCI layout written by hand, blobs streamed from disk (the spec, not our code)."""

    def add_blob(path: Path) -> dict[str, object]:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                sha.update(chunk)
        (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, layout / "blobs/sha256" / sha.hexdigest())
        return {"digest": f"sha256:{sha.hexdigest()}", "size": path.stat().st_size}

    def add_json(name: str, document: dict[str, object]) -> dict[str, object]:
        path = layout.parent / name
        path.write_text(json.dumps(document))
        return add_blob(path)

    diff_id = add_blob(layer)["digest"]
    config = add_json(
        "config.json",
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}},
    )
    manifest = add_json(
        "manifest.json",
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **add_blob(layer)}],
        },
    )
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        **manifest,
                        "annotations": {"org.opencontainers.image.ref.name": tag},
                    }
                ],
            }
        )
    )


def file_digest(iso: Path, path: str) -> str:
    """The sha256 of one file inside an ISO (by its Joliet path), read in chunks."""
    import pycdlib

    reader = pycdlib.PyCdlib()
    reader.open(str(iso))
    digest = hashlib.sha256()
    try:
        with reader.open_file_from_iso(joliet_path=path) as handle:
            while chunk := handle.read(4 << 20):
                digest.update(chunk)
    finally:
        reader.close()
    return digest.hexdigest()
