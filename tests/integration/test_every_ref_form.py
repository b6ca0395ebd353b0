"""Every reference form builds the skeleton's ISO: the same trixie tree handed over as an OCI
layout, an OCI archive, a `docker save` archive, through a real registry, through a real docker
daemon, and as a directory. Image forms share one config digest, so they share one conversion.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import docker
import pytest

from kairos_build.core.cache import Cache, cache_key
from kairos_build.core.flavors import load_flavor
from tests.conftest import run_cli
from tests.imagefiles import tar_tree, write_oci_layout
from tests.integration.test_docker_daemon import dockerd  # noqa: F401 - a fixture
from tests.integration.test_registry import Registry, start_registry  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration
TAG = "trixie"


@pytest.fixture(scope="module")
def trixie_tree(test_cache: Path, built_iso: tuple[Path, str]) -> Path:
    recipe = load_flavor("debian").release("trixie").bootstrap
    return Cache(test_cache).path("rootfs", cache_key("bootstrap", recipe=recipe))


@pytest.fixture(scope="module")
def layout(trixie_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("image")
    (work / "layout").mkdir()
    write_oci_layout(work / "layout", tar_tree(trixie_tree, work / "layer.tar"), TAG)
    yield work / "layout"
    shutil.rmtree(work, ignore_errors=True)  # CI's disk is shared: free it once checked


@pytest.fixture(scope="module")
def docker_archive(layout: Path) -> Path:
    archive = layout.parent / "docker-save.tar"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{layout}:{TAG}", f"docker-archive:{archive}:kairos/base:{TAG}"],
        check=True,
        timeout=300,
    )
    return archive


def config_digest(layout: Path) -> str:
    import json

    index = json.loads((layout / "index.json").read_text())
    manifest_hex = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads((layout / "blobs/sha256" / manifest_hex).read_text())
    return str(manifest["config"]["digest"])


@pytest.fixture
def ref_for(
    layout: Path,
    docker_archive: Path,
    trixie_tree: Path,
    tmp_path: Path,
    start_registry: Callable[..., Registry],  # noqa: F811
    request: pytest.FixtureRequest,
) -> Iterator[Callable[[str], tuple[str, dict[str, str]]]]:
    no_daemon = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}

    def make(form: str) -> tuple[str, dict[str, str]]:
        if form == "oci":
            return f"oci:{layout}:{TAG}", no_daemon
        if form == "oci-archive":
            archive = tmp_path / "image.oci.tar"
            with tarfile.open(archive, "w") as tar:
                tar.add(layout, arcname=".")
            return f"oci-archive:{archive}:{TAG}", no_daemon
        if form == "docker-archive":
            return f"docker-archive:{docker_archive}", no_daemon
        if form == "registry":
            registry = start_registry()
            registry.push(layout, TAG, f"kairos/base:{TAG}")
            return f"{registry.address}/kairos/base:{TAG}", no_daemon
        if form == "daemon":
            host = request.getfixturevalue("dockerd")
            with (
                closing(docker.DockerClient(base_url=host, timeout=300)) as client,
                docker_archive.open("rb") as data,
            ):
                client.images.load(data)
            return f"docker://kairos/base:{TAG}", {"DOCKER_HOST": host}
        assert form == "dir"
        return f"dir:{trixie_tree}", no_daemon

    yield make


@pytest.mark.parametrize("form", ["oci", "oci-archive", "docker-archive", "registry", "daemon", "dir"])
def test_every_reference_form_builds_the_iso(
    form: str,
    ref_for: Callable[[str], tuple[str, dict[str, str]]],
    layout: Path,
    test_cache: Path,
    tmp_path: Path,
) -> None:
    ref, env = ref_for(form)
    out = tmp_path / "out"
    result = run_cli("iso", "--base", ref, "--output", str(out), "--cache-dir", str(test_cache), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    iso = out / "kairos-debian-13-core-amd64-generic-v0.1.0.iso"
    report = subprocess.run(
        ["xorriso", "-indev", str(iso), "-report_el_torito", "plain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.findall(r"El Torito boot img :\s+\d+\s+(\w+)", report) == ["BIOS", "UEFI"]
    if form != "dir":
        # The image was recognised as the same image, whichever way it came.
        assert config_digest(layout)[:19] in result.stderr, result.stderr[-2000:]
