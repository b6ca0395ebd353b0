"""`docker save` archives: the legacy layout (docker 20.10) and docker 25+'s OCI layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kairos_build.core.errors import HostileContentError, InputError
from kairos_build.source.docker_archive import normalize_name, open_docker_archive
from kairos_build.source.image import apply_image
from tests.unit.ocihelp import Layout, compress, digest_of, dir_, layer_tar, reg, sym, whiteout

BASE = layer_tar(
    dir_("etc"),
    reg("etc/os-release", b"ID=base\n"),
    reg("etc/old", b"x"),
    dir_("usr"),
    dir_("usr/bin"),
    reg("usr/bin/su", b"elf", mode=0o4755),
    reg("usr/bin/tool", b"#!/bin/sh\n", mode=0o755),
)
TOP = layer_tar(reg("etc/os-release", b"ID=top\n"), whiteout("etc/.wh.old"), sym("bin", "usr/bin"))


def hexof(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_of(*layers: bytes, arch: str = "amd64", diff_ids: list[str] | None = None) -> bytes:
    return json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids or [digest_of(x) for x in layers]},
        }
    ).encode()


def write_tar(path: Path, files: list[tuple[str, bytes | str]], *, gzipped: bool = False) -> Path:
    """A tar of regular files (bytes) and symlinks (str targets), in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    data = buffer.getvalue()
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


def legacy_files(
    images: list[tuple[list[bytes], list[str]]],
    *,
    config: bytes | None = None,
    layer_names: list[str] | None = None,
) -> list[tuple[str, bytes | str]]:
    """What docker 20.10's `docker save` writes: <id>/layer.tar dirs, <hex>.json, manifest.json."""
    files: list[tuple[str, bytes | str]] = []
    manifest: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for layers, tags in images:
        names = []
        for number, layer in enumerate(layers):
            layer_id = hexof(f"{tags}{number}".encode())
            name = f"{layer_id}/layer.tar"
            if digest_of(layer) in seen:  # docker links a layer it already wrote
                files.append((name, f"../{seen[digest_of(layer)]}"))
            else:
                files += [(f"{layer_id}/VERSION", b"1.0"), (name, layer)]
                seen[digest_of(layer)] = name
            names.append(name)
        blob = config or config_of(*layers)
        files.append((f"{hexof(blob)}.json", blob))
        manifest.append({"Config": f"{hexof(blob)}.json", "RepoTags": tags, "Layers": layer_names or names})
    return [*files, ("manifest.json", json.dumps(manifest).encode())]


def oci_files(images: list[tuple[list[bytes], list[str]]]) -> list[tuple[str, bytes | str]]:
    """What docker 25+ writes: an OCI layout (uncompressed layers) plus manifest.json."""
    layout = Layout()
    for layers, tags in images:
        descriptor = layout.image(*layers, compression="none")
        for tag in tags:
            layout.manifests.append(
                {
                    **descriptor,
                    "annotations": {
                        "io.containerd.image.name": f"docker.io/library/{tag}",
                        "org.opencontainers.image.ref.name": tag.rpartition(":")[2],
                    },
                }
            )
    return [*layout.files().items(), ("manifest.json", b"[]")]


@pytest.fixture
def target(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    return tmp_path / "rootfs"


def check_tree(target: Path) -> None:
    assert (target / "etc" / "os-release").read_text() == "ID=top\n"
    assert not (target / "etc" / "old").exists()
    assert os.readlink(target / "bin") == "usr/bin"
    assert os.stat(target / "usr" / "bin" / "su").st_mode & 0o7777 == 0o4755
    assert os.access(target / "bin" / "tool", os.X_OK)


# --- reading and unpacking -----------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [False, True], ids=["tar", "tar.gz"])
def test_a_legacy_archive_unpacks(tmp_path: Path, target: Path, gzipped: bool) -> None:
    archive = write_tar(tmp_path / "x.tar", legacy_files([([BASE, TOP], ["x:1"])]), gzipped=gzipped)
    image = open_docker_archive(archive)
    assert image.config_digest == "sha256:" + hexof(config_of(BASE, TOP))
    assert [layer.digest for layer in image.layers] == [digest_of(BASE), digest_of(TOP)]
    assert all(layer.uncompressed for layer in image.layers)
    apply_image(image, target)
    check_tree(target)


def test_a_compressed_legacy_layer_is_checked_after_decompression(
    tmp_path: Path,
    target: Path,
) -> None:
    files = legacy_files([([BASE, TOP], ["x:1"])])
    files = [
        (n, compress(c, "gzip") if n.endswith("layer.tar") and isinstance(c, bytes) else c) for n, c in files
    ]
    apply_image(open_docker_archive(write_tar(tmp_path / "x.tar", files)), target)
    check_tree(target)


def test_an_oci_style_archive_unpacks(tmp_path: Path, target: Path) -> None:
    archive = write_tar(tmp_path / "x.tar", oci_files([([BASE, TOP], ["x:1", "x:latest"])]))
    image = open_docker_archive(archive)
    assert [layer.digest for layer in image.layers] == [digest_of(BASE), digest_of(TOP)]
    apply_image(image, target)
    check_tree(target)


@pytest.mark.parametrize("files", [legacy_files, oci_files], ids=["legacy", "oci"])
@pytest.mark.parametrize("tag", ["x:1", "docker.io/library/x:1", "library/x:1"])
def test_a_tag_selects_among_several_images(
    tmp_path: Path,
    target: Path,
    files: Any,
    tag: str,
) -> None:
    other = layer_tar(reg("etc/os-release", b"ID=other\n"))
    archive = write_tar(tmp_path / "x.tar", files([([other], ["y:1"]), ([BASE, TOP], ["x:1"])]))
    apply_image(open_docker_archive(archive, tag), target)
    check_tree(target)
    with pytest.raises(InputError, match="several images") as info:
        open_docker_archive(archive)
    assert "x:1" in str(info.value) and "y:1" in str(info.value)
    with pytest.raises(InputError, match="no image tagged 'z:1'"):
        open_docker_archive(archive, "z:1")


def test_a_bare_name_means_latest(tmp_path: Path) -> None:
    assert normalize_name("debian") == "debian:latest"
    assert normalize_name("docker.io/library/debian:12") == "debian:12"
    assert normalize_name("localhost:5000/a/b") == "localhost:5000/a/b:latest"
    archive = write_tar(tmp_path / "x.tar", legacy_files([([BASE], ["x:latest"]), ([TOP], ["y:1"])]))
    assert [layer.digest for layer in open_docker_archive(archive, "x").layers] == [digest_of(BASE)]


def test_a_layer_shared_through_a_link_is_followed(tmp_path: Path, target: Path) -> None:
    archive = write_tar(tmp_path / "x.tar", legacy_files([([BASE], ["a:1"]), ([BASE, TOP], ["x:1"])]))
    apply_image(open_docker_archive(archive, "x:1"), target)
    check_tree(target)


# --- broken and hostile archives -----------------------------------------------------------


def test_a_wrong_diff_id_is_corrupt(tmp_path: Path, target: Path) -> None:
    config = config_of(diff_ids=[digest_of(BASE), digest_of(b"something else")])
    archive = write_tar(tmp_path / "x.tar", legacy_files([([BASE, TOP], ["x:1"])], config=config))
    with pytest.raises(InputError, match="corrupt"):
        apply_image(open_docker_archive(archive), target)


def test_a_config_that_does_not_match_its_name_is_corrupt(tmp_path: Path) -> None:
    files = [
        (
            n,
            c.replace(b'"amd64"', b'"AMD64"')
            if n.endswith(".json") and isinstance(c, bytes) and n != "manifest.json"
            else c,
        )
        for n, c in legacy_files([([BASE], ["x:1"])])
    ]
    with pytest.raises(InputError, match="corrupt"):
        open_docker_archive(write_tar(tmp_path / "x.tar", files))


def test_layers_must_match_diff_ids(tmp_path: Path) -> None:
    config = config_of(BASE)
    archive = write_tar(tmp_path / "x.tar", legacy_files([([BASE, TOP], ["x:1"])], config=config))
    with pytest.raises(InputError, match="diff_ids"):
        open_docker_archive(archive)


def test_another_platform_is_refused(tmp_path: Path) -> None:
    config = config_of(BASE, arch="arm64")
    archive = write_tar(tmp_path / "x.tar", legacy_files([([BASE], ["x:1"])], config=config))
    with pytest.raises(InputError, match="linux/arm64, not the requested linux/amd64"):
        open_docker_archive(archive)
    assert open_docker_archive(archive, platform="linux/arm64").layers


@pytest.mark.parametrize("name", ["../outside/layer.tar", "/etc/passwd", "a/../../layer.tar"])
def test_hostile_layer_names_are_refused(tmp_path: Path, name: str) -> None:
    archive = write_tar(tmp_path / "x.tar", legacy_files([([BASE], ["x:1"])], layer_names=[name]))
    with pytest.raises(HostileContentError, match="leaves the archive"):
        open_docker_archive(archive)


@pytest.mark.parametrize("link", ["../../etc/passwd", "/etc/passwd"])
def test_a_layer_linking_out_of_the_archive_is_refused(tmp_path: Path, link: str) -> None:
    files = [(n, link if n.endswith("layer.tar") else c) for n, c in legacy_files([([BASE], ["x:1"])])]
    with pytest.raises(HostileContentError, match="leaves the archive"):
        open_docker_archive(write_tar(tmp_path / "x.tar", files))


def test_missing_and_non_regular_members_are_refused(tmp_path: Path) -> None:
    archive = write_tar(
        tmp_path / "x.tar", legacy_files([([BASE], ["x:1"])], layer_names=["nothing/layer.tar"])
    )
    with pytest.raises(InputError, match="has no nothing/layer.tar"):
        open_docker_archive(archive)
    files = [*legacy_files([([BASE], ["x:1"])], layer_names=["loop"]), ("loop", "loop")]
    with pytest.raises(InputError, match="does not end"):
        open_docker_archive(write_tar(tmp_path / "y.tar", files))


def test_garbage_and_empty_archives_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "garbage").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InputError, match="not a readable docker archive"):
        open_docker_archive(tmp_path / "garbage")
    with pytest.raises(InputError, match="no manifest.json or index.json"):
        open_docker_archive(write_tar(tmp_path / "x.tar", [("hello", b"x")]))
    with pytest.raises(InputError, match="not a readable docker archive"):
        open_docker_archive(tmp_path / "absent.tar")


def test_a_truncated_archive_is_an_input_error(tmp_path: Path, target: Path) -> None:
    files = legacy_files([([BASE, TOP], ["x:1"])])
    archive = write_tar(tmp_path / "x.tar", files)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # docker writes manifest.json last
    with pytest.raises(InputError, match="truncated"):
        open_docker_archive(archive)
    # manifest.json first, so the cut falls in a layer.
    archive = write_tar(tmp_path / "y.tar", [files[-1], *files[:-1]])
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        apply_image(open_docker_archive(archive), target)
    gzipped = write_tar(tmp_path / "z.tar.gz", [files[-1], *files[:-1]], gzipped=True)
    data = gzipped.read_bytes()
    gzipped.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(InputError):
        apply_image(open_docker_archive(gzipped), target)
