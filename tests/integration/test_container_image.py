"""kairos-build as a container image: the repository's Dockerfile builds with a real engine (the
test's own dockerd, legacy builder) and the image, run as docs/ci.md says (--privileged, or
where this host cannot give that, the narrower set; the output folder and the cache as
volumes), writes an ISO and its checksum into the output. The conversion sandbox runs in it
with those privileges and is refused under docker's defaults."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.integration.test_docker_daemon import dockerd  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The Dockerfile's BASE: no registry is reachable here, so the base image is made from a `docker
# import` of the trixie rootfs the suite bootstraps (conftest's trixie_base), not debian:bookworm.
ROOTFS_IMAGE = "kairos-test/debian:trixie"
BASE_IMAGE = "kairos-test/debian:trixie-host-ca"
TOOL_IMAGE = "kairos-test/kairos-build:test"
# The host's CA bundle, which pip in the image is told to use: a CI host that reaches PyPI
# through a TLS-inspecting proxy (this one does) trusts that proxy's CA there, as a site's own
# base image would. On other hosts the bundle holds the public CAs: no change.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture(scope="module")
def client(
    dockerd: str,  # noqa: F811
    trixie_base: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[docker.DockerClient]:
    """A client of the test dockerd that has built TOOL_IMAGE; the images are removed at the
    end (the disk is shared), with whatever containers used them."""
    with closing(docker.DockerClient(base_url=dockerd, timeout=3600)) as client:
        try:
            make_base(client, trixie_base, tmp_path_factory.mktemp("base"))
            build_image(client)
            yield client
        finally:
            for name in (TOOL_IMAGE, BASE_IMAGE, ROOTFS_IMAGE):
                with suppress(docker.errors.ImageNotFound):
                    client.images.remove(name, force=True)


def make_base(client: docker.DockerClient, rootfs: Path, context: Path) -> None:
    """BASE_IMAGE: `docker import` of `rootfs` as ROOTFS_IMAGE, plus the host's CA bundle
    (built from the empty folder `context`)."""
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."], stdout=subprocess.PIPE
    )
    assert tar.stdout is not None
    repository, tag = ROOTFS_IMAGE.split(":")
    client.api.import_image_from_stream(tar.stdout, repository=repository, tag=tag)
    assert tar.wait() == 0
    shutil.copy(HOST_CA_BUNDLE, context / "host-ca.crt")
    (context / "Dockerfile").write_text(
        f"FROM {ROOTFS_IMAGE}\nCOPY host-ca.crt /etc/ssl/host-ca.crt\nENV PIP_CERT=/etc/ssl/host-ca.crt\n"
    )
    client.images.build(path=str(context), tag=BASE_IMAGE, rm=True, forcerm=True)


def build_image(client: docker.DockerClient) -> None:
    # The test dockerd has no bridge: build steps use the host's network (apt, PyPI).
    try:
        client.images.build(
            path=str(ROOT),
            buildargs={"BASE": BASE_IMAGE},
            tag=TOOL_IMAGE,
            network_mode="host",
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(line.get("stream", line.get("error", ""))) for line in exc.build_log)
        raise AssertionError(log[-4000:]) from exc


def container_privileges() -> dict[str, Any]:
    """--privileged, as docs/ci.md runs it. Docker cannot start a privileged container where
    root lacks a capability (this CI's VM has no CAP_SYS_RESOURCE in its bounding set); there
    the run gets the narrower set docs/ci.md names: CAP_SYS_ADMIN, and no seccomp or AppArmor
    profile (docker's seccomp profile refuses pivot_root even with CAP_SYS_ADMIN)."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    found = re.search(r"^CapBnd:\s*([0-9a-f]+)$", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert found is not None
    if int(found.group(1), 16) == (1 << (last + 1)) - 1:
        return {"privileged": True}
    return {"cap_add": ["SYS_ADMIN"], "security_opt": ["seccomp=unconfined", "apparmor=unconfined"]}


def run_container(
    client: docker.DockerClient,
    volumes: dict[Path, str],
    *args: str,
    entrypoint: list[str] | None = None,
    **options: Any,
) -> tuple[int, str]:
    """Run TOOL_IMAGE on the host's network with `volumes` (host path -> path inside); its exit
    status and its output."""
    container = client.containers.run(
        TOOL_IMAGE,
        list(args),
        entrypoint=entrypoint,
        network_mode="host",
        detach=True,
        volumes={str(host): {"bind": inside, "mode": "rw"} for host, inside in volumes.items()},
        **options,
    )
    try:
        status = container.wait(timeout=3600)["StatusCode"]
        return status, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_the_image_builds_an_iso_into_the_output_volume(
    test_cache: Path, tmp_path: Path, client: docker.DockerClient
) -> None:
    # As docs/ci.md runs it, the test cache as the cache volume (the bootstrap and the
    # conversion are reused).
    out = tmp_path / "build"
    out.mkdir()
    status, log = run_container(
        client,
        {out: "/build", test_cache: "/var/cache/kairos-build"},
        "iso",
        "--flavor",
        "debian",
        "--base",
        "bootstrap:debian/trixie",
        **container_privileges(),
    )
    assert status == 0, log[-4000:]

    isos = list(out.glob("*.iso"))
    assert [iso.name for iso in isos] == ["kairos-debian-13-core-amd64-generic-v0.1.0.iso"], log[-3000:]
    digest = hashlib.sha256()
    with isos[0].open("rb") as iso:
        while chunk := iso.read(1 << 20):
            digest.update(chunk)
    assert (out / f"{isos[0].name}.sha256").read_text() == f"{digest.hexdigest()}  {isos[0].name}\n"


# A command in the conversion sandbox over the trixie rootfs (read-only): the build above
# reuses a cached conversion, so this shows what the privileges are for.
SANDBOX_PROBE = """
from pathlib import Path
from kairos_build.core.sandbox import run_in_root
print("sandbox PID 1:", run_in_root(Path("/rootfs"), ["cat", "/proc/1/comm"], read_only=True))
"""


def test_the_conversion_sandbox_runs_with_these_privileges_and_not_without(
    client: docker.DockerClient, trixie_base: Path
) -> None:
    probe = ["/opt/kairos-build/.venv/bin/python", "-c", SANDBOX_PROBE]
    status, log = run_container(client, {trixie_base: "/rootfs"}, entrypoint=probe, **container_privileges())
    assert status == 0 and "sandbox PID 1: bwrap" in log, log[-3000:]

    # Docker's defaults: no CAP_SYS_ADMIN in the bounding set, which the sandbox's setpriv
    # keeps for bubblewrap.
    status, log = run_container(client, {trixie_base: "/rootfs"}, entrypoint=probe)
    assert status != 0, log[-3000:]
    assert "refused by the sandbox" in log and "Operation not permitted" in log, log[-3000:]
