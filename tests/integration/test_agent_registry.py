"""kairos-agent's upgrade sources read by the agent's own code (the same the node runs): an
image pulled from a real registry (Debian's docker-registry, pushed by skopeo) and OCI
layouts, into a tree, with broken and foreign images refused in one message."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kairos_build.agent.images import source_tree
from kairos_build.agent.system import NodeError
from tests.integration.test_registry import (  # noqa: F401 - start_registry is a fixture
    REGISTRY_BIN,
    Registry,
    start_registry,
    tree,
)
from tests.unit.ocihelp import Layout, dir_, layer_tar, reg, whiteout

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (Path(REGISTRY_BIN).exists() and shutil.which("skopeo")),
        reason="needs the Debian packages docker-registry and skopeo",
    ),
]
RELEASE = b'KAIROS_VERSION="v2.0.0"\n'


def kairos_image(layout: Layout, compression: str = "gzip") -> dict[str, Any]:
    return layout.image(
        layer_tar(dir_("etc"), reg("etc/kairos-release", b"old"), reg("etc/gone", b"x")),
        layer_tar(reg("etc/kairos-release", RELEASE), whiteout("etc/.wh.gone")),
        compression=[compression, compression],
    )


@pytest.fixture
def pushed(
    start_registry: Callable[..., Registry],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> tuple[Registry, Layout, dict[str, Any]]:
    registry = start_registry()
    layout = Layout()
    manifest = kairos_image(layout)
    layout.add(manifest, tag="v2")
    registry.push(layout.write_dir(tmp_path / "layout"), "v2", "kairos/node:v2")
    return registry, layout, manifest


@pytest.mark.parametrize("form", ["docker://{address}/kairos/node:v2", "oci:{address}/kairos/node:v2"])
def test_a_registry_image_becomes_the_upgrade_tree(
    pushed: tuple[Registry, Layout, dict[str, Any]], tmp_path: Path, form: str
) -> None:
    registry = pushed[0]
    scratch = tmp_path / "scratch"
    with source_tree(form.format(address=registry.address), scratch) as root:
        assert tree(root) == {"etc": ("dir", 0o755, None), "etc/kairos-release": ("file", 0o644, RELEASE)}
    assert not scratch.exists()  # the unpacked tree goes once the upgrade has it


def test_a_corrupt_layer_in_the_registry_is_refused(
    pushed: tuple[Registry, Layout, dict[str, Any]], tmp_path: Path
) -> None:
    registry, layout, manifest = pushed
    data = registry.blob_data(layout.layer_digests(manifest)[1])
    data.write_bytes(bytes(b ^ 0xFF for b in data.read_bytes()))
    source = f"docker://{registry.address}/kairos/node:v2"
    with (
        pytest.raises(NodeError, match="is corrupt|does not match its digest"),
        source_tree(source, tmp_path / "scratch"),
    ):
        pass
    assert not (tmp_path / "scratch").exists()


def test_missing_images_and_tags_are_named(
    pushed: tuple[Registry, Layout, dict[str, Any]], tmp_path: Path
) -> None:
    registry = pushed[0]
    with (
        pytest.raises(NodeError, match="no such image or tag"),
        source_tree(f"docker://{registry.address}/kairos/node:v9", tmp_path / "s"),
    ):
        pass


def test_oci_layouts_and_archives_from_the_disk(tmp_path: Path) -> None:
    layout = Layout()
    manifest = kairos_image(layout)
    layout.add(manifest, tag="v2")
    folder = layout.write_dir(tmp_path / "layout")
    for source in (f"oci:{folder}", f"oci:{folder}:v2"):
        with source_tree(source, tmp_path / "scratch") as root:
            assert (root / "etc/kairos-release").read_bytes() == RELEASE
            assert not (root / "etc/gone").exists()
    with (
        pytest.raises(NodeError, match="no amd64 image tagged v3"),
        source_tree(f"oci:{folder}:v3", tmp_path / "scratch"),
    ):
        pass


def test_zstd_layers_and_foreign_images_are_refused_in_one_message(tmp_path: Path) -> None:
    layout = Layout()
    layout.add(kairos_image(layout, compression="zstd"), tag="v2")
    folder = layout.write_dir(tmp_path / "zstd")
    with (
        pytest.raises(NodeError, match="zstd-compressed layers are not supported"),
        source_tree(f"oci:{folder}", tmp_path / "scratch"),
    ):
        pass
    plain = Layout()
    plain.add(
        plain.image(layer_tar(dir_("etc"), reg("etc/os-release", b"ID=x\n")), compression=["gzip"]), tag="v1"
    )
    folder = plain.write_dir(tmp_path / "plain")
    with (
        pytest.raises(NodeError, match="is not a Kairos system"),
        source_tree(f"oci:{folder}", tmp_path / "scratch"),
    ):
        pass
    index = json.loads((folder / "index.json").read_text())
    assert index["manifests"]  # the layout itself was fine: only what it holds is refused
