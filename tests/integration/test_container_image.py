"""kairos-build as a container image: the repository's Dockerfile builds with a real engine (the
test's own dockerd, legacy builder) and the image, run as the README says (--privileged, the
output folder and the cache as volumes), writes an ISO and its checksum into the output."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path

import docker
import pytest

from tests.integration.test_docker_daemon import dockerd  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The Dockerfile's BASE: no registry is reachable here, so the base image is `docker import` of
# the trixie rootfs the suite bootstraps (tests/conftest.py's trixie_base), not debian:bookworm.
BASE_IMAGE = "kairos-test/debian:trixie"
TOOL_IMAGE = "kairos-test/kairos-build:test"


@pytest.fixture
def client(dockerd: str) -> Iterator[docker.DockerClient]:  # noqa: F811
    """A client of the test dockerd; the images made here are removed afterwards (the disk is
    shared), with whatever containers used them."""
    with closing(docker.DockerClient(base_url=dockerd, timeout=3600)) as client:
        try:
            yield client
        finally:
            for name in (TOOL_IMAGE, BASE_IMAGE):
                with suppress(docker.errors.ImageNotFound):
                    client.images.remove(name, force=True)


def import_base(client: docker.DockerClient, rootfs: Path) -> None:
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."],
                           stdout=subprocess.PIPE)
    assert tar.stdout is not None
    repository, tag = BASE_IMAGE.split(":")
    client.api.import_image_from_stream(tar.stdout, repository=repository, tag=tag)
    assert tar.wait() == 0


def build_image(client: docker.DockerClient) -> None:
    # The test dockerd has no bridge: build steps use the host's network (apt, PyPI).
    try:
        client.images.build(path=str(ROOT), buildargs={"BASE": BASE_IMAGE}, tag=TOOL_IMAGE,
                            network_mode="host", rm=True, forcerm=True)
    except docker.errors.BuildError as exc:
        log = "".join(str(line.get("stream", line.get("error", ""))) for line in exc.build_log)
        raise AssertionError(log[-4000:]) from exc


def test_the_image_builds_an_iso_into_the_output_volume(
        test_cache: Path, tmp_path: Path, client: docker.DockerClient, trixie_base: Path) -> None:
    import_base(client, trixie_base)
    build_image(client)

    out = tmp_path / "build"
    out.mkdir()
    # As the README runs it; the cache volume is the test cache, so the bootstrap and the
    # conversion are reused.
    container = client.containers.run(
        TOOL_IMAGE, ["iso", "--flavor", "debian", "--base", "bootstrap:debian/trixie"],
        privileged=True, network_mode="host", detach=True,
        volumes={str(out): {"bind": "/build", "mode": "rw"},
                 str(test_cache): {"bind": "/var/cache/kairos-build", "mode": "rw"}})
    try:
        status = container.wait(timeout=3600)["StatusCode"]
        log = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status == 0, log[-4000:]

    isos = list(out.glob("*.iso"))
    assert [iso.name for iso in isos] == ["kairos-debian-13-core-amd64-generic-v0.1.0.iso"], log[-3000:]
    digest = hashlib.sha256()
    with isos[0].open("rb") as iso:
        while chunk := iso.read(1 << 20):
            digest.update(chunk)
    assert (out / f"{isos[0].name}.sha256").read_text() == f"{digest.hexdigest()}  {isos[0].name}\n"
