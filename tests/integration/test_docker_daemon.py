"""docker://NAME through a real docker daemon: a private dockerd started for the session.

Needs root and Debian's docker.io (dockerd, containerd, runc). No container is ever run and
nothing is pulled from the network: images come from `docker import` of a tree made here.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import docker
import pytest

from kairos_build.core.errors import InputError
from kairos_build.source.docker_daemon import daemon_available, open_daemon_image
from kairos_build.source.image import apply_image
from tests.unit.ocihelp import digest_of
from tests.unit.test_docker_archive import BASE, TOP, legacy_files, write_tar
from tests.unit.test_docker_archive import check_tree as check_layered_tree

pytestmark = pytest.mark.integration

NAME = "kairos-test/rootfs"
# path -> (kind, mode, content or link target)
TREE: dict[str, tuple[str, int, str]] = {
    "etc": ("dir", 0o755, ""),
    "etc/os-release": ("file", 0o644, "ID=kairostest\n"),
    "usr": ("dir", 0o755, ""),
    "usr/bin": ("dir", 0o755, ""),
    "usr/bin/su": ("file", 0o4755, "setuid\n"),
    "usr/bin/hello": ("file", 0o755, "#!/bin/sh\necho hello\n"),
    "bin": ("link", 0o777, "usr/bin"),
    "var": ("dir", 0o755, ""),
    "var/empty": ("dir", 0o700, ""),
}


def _start(root: Path, driver: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    work = root / driver
    work.mkdir()
    sock = work / "docker.sock"
    log = work / "dockerd.log"
    (work / "daemon.json").write_text("{}")  # so that no /etc/docker/daemon.json applies
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "dockerd",
                "--data-root",
                str(work / "data"),
                "--exec-root",
                str(work / "exec"),
                "--pidfile",
                str(work / "docker.pid"),
                "--host",
                f"unix://{sock}",
                "--storage-driver",
                driver,
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--config-file",
                str(work / "daemon.json"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return proc, f"unix://{sock}", log


def _answers(host: str) -> bool:
    try:
        client = docker.DockerClient(base_url=host, timeout=2)
    except docker.errors.DockerException:
        return False
    with closing(client):
        return bool(client.ping())


def _stop(proc: subprocess.Popen[bytes], root: Path | None = None) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if root is not None:
        # dockerd leaves its network namespace file (exec-root/netns/default) mounted.
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The DOCKER_HOST of a private dockerd (overlay2, else vfs), stopped at the end."""
    if os.geteuid() != 0:
        pytest.skip("starting dockerd needs root")
    if not shutil.which("dockerd"):
        pytest.skip("dockerd is not installed (apt-get install docker.io)")
    root = tmp_path_factory.mktemp("dockerd")
    reasons = []
    for driver in ("overlay2", "vfs"):
        proc, host, log = _start(root, driver)
        try:
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:
                if _answers(host):
                    yield host
                    return
                time.sleep(0.3)
        finally:
            _stop(proc, root)
        tail = log.read_text(errors="replace").splitlines()[-5:]
        reasons.append(f"{driver}: " + " | ".join(tail))
    pytest.skip("dockerd does not start here: " + " / ".join(reasons))


def _rootfs_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, (kind, mode, content) in TREE.items():
            info = tarfile.TarInfo(path)
            info.mode, info.mtime = mode, 1_600_000_000
            data = content.encode()
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, content
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def imported(dockerd: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`docker import` of TREE as NAME:1 and NAME:latest; returns the platform it is for."""
    tar = tmp_path_factory.mktemp("import") / "rootfs.tar"
    tar.write_bytes(_rootfs_tar())
    with closing(docker.DockerClient(base_url=dockerd, timeout=60)) as client:
        client.api.import_image(src=str(tar), repository=NAME, tag="1")
        image = client.images.get(f"{NAME}:1")
        image.tag(NAME, "latest")
        return f"linux/{image.attrs['Architecture']}"


@pytest.fixture
def host(dockerd: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DOCKER_HOST", dockerd)
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    return dockerd


def check_tree(root: Path) -> None:
    found = {p.relative_to(root).as_posix() for p in root.rglob("*")}
    assert found == set(TREE)
    for path, (kind, mode, content) in TREE.items():
        st = os.lstat(root / path)
        if kind == "link":
            assert stat.S_ISLNK(st.st_mode) and os.readlink(root / path) == content
            continue
        assert stat.S_IMODE(st.st_mode) == mode, path
        if kind == "file":
            assert (root / path).read_text() == content
        else:
            assert stat.S_ISDIR(st.st_mode)
    assert os.access(root / "bin" / "hello", os.X_OK)


@pytest.mark.parametrize("ref", [f"{NAME}:1", NAME, f"docker.io/{NAME}:latest"])
@pytest.mark.parametrize("pull", ["missing", "never"])
def test_an_imported_image_unpacks(host: str, imported: str, tmp_path: Path, ref: str, pull: str) -> None:
    assert daemon_available()
    (tmp_path / "work").mkdir()
    (tmp_path / "rootfs").mkdir()
    image = open_daemon_image(ref, tmp_path / "work", pull=pull, platform=imported)
    assert image is not None
    assert image.description == f"docker image {ref}"
    assert len(image.layers) == 1 and image.layers[0].uncompressed
    apply_image(image, tmp_path / "rootfs")
    check_tree(tmp_path / "rootfs")


def test_an_image_id_unpacks(host: str, imported: str, tmp_path: Path) -> None:
    with closing(docker.from_env()) as client:
        image_id = client.images.get(f"{NAME}:1").id
    (tmp_path / "rootfs").mkdir()
    image = open_daemon_image(image_id, tmp_path, pull="never", platform=imported)
    assert image is not None
    apply_image(image, tmp_path / "rootfs")
    check_tree(tmp_path / "rootfs")


def test_an_absent_image_with_pull_never(host: str, imported: str, tmp_path: Path) -> None:
    with pytest.raises(
        InputError,
        match="image kairos-test/absent:1 is not in the docker daemon and --pull never forbids pulling",
    ):
        open_daemon_image("kairos-test/absent:1", tmp_path, pull="never", platform=imported)


def test_a_failed_pull_is_an_input_error(host: str, imported: str, tmp_path: Path) -> None:
    # Nothing listens on port 1: the daemon fails at once, without the network.
    with pytest.raises(InputError, match="docker cannot pull localhost:1/absent:1"):
        open_daemon_image("localhost:1/absent:1", tmp_path, pull="missing", platform=imported)


def test_another_platform_is_refused(host: str, imported: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"is for {imported}, not the requested linux/s390x"):
        open_daemon_image(f"{NAME}:1", tmp_path, pull="never", platform="linux/s390x")


def test_an_absent_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    started = time.monotonic()
    assert not daemon_available()
    assert open_daemon_image("debian:trixie", tmp_path) is None
    assert time.monotonic() - started < 10


def test_a_loaded_layered_image_round_trips(host: str, imported: str, tmp_path: Path) -> None:
    """Layers with whiteouts and links, through `docker load` and back out with `docker save`."""
    archive = write_tar(tmp_path / "in.tar", legacy_files([([BASE, TOP], ["kairos-test/layered:1"])]))
    with closing(docker.from_env()) as client:
        client.images.load(archive.read_bytes())
    (tmp_path / "work").mkdir()
    (tmp_path / "rootfs").mkdir()
    image = open_daemon_image("kairos-test/layered:1", tmp_path / "work", pull="never")
    assert image is not None
    assert [layer.digest for layer in image.layers] == [digest_of(BASE), digest_of(TOP)]
    apply_image(image, tmp_path / "rootfs")
    check_layered_tree(tmp_path / "rootfs")


def test_pull_always_pulls_even_a_local_image(host: str, imported: str, tmp_path: Path) -> None:
    with closing(docker.from_env()) as client:
        client.images.get(f"{NAME}:1").tag("localhost:1/kairos-test", "1")
    assert open_daemon_image("localhost:1/kairos-test:1", tmp_path, pull="never", platform=imported)
    with pytest.raises(InputError, match="docker cannot pull localhost:1/kairos-test:1"):
        open_daemon_image("localhost:1/kairos-test:1", tmp_path, pull="always", platform=imported)
