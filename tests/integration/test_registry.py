"""Pulling from a real registry: Debian's docker-registry (distribution 2.8), images pushed by skopeo.

Needs the Debian packages docker-registry and skopeo. Every test starts its own registry on a
free port of 127.0.0.1 with its own storage, never the package's system service.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from kairos_build.core.cache import Cache
from kairos_build.core.errors import BuildError, InputError
from kairos_build.source import registry_api as registry_module
from kairos_build.source.image import apply_image
from kairos_build.source.registry import open_registry_image
from tests.unit.ocihelp import Layout, dir_, entry, layer_tar, reg, sym, whiteout

REGISTRY_BIN = "/usr/bin/docker-registry"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (Path(REGISTRY_BIN).exists() and shutil.which("skopeo")),
        reason="needs the Debian packages docker-registry and skopeo",
    ),
]
USER, PASSWORD = "builder", "s3cret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Registry:
    """A docker-registry process serving `root`, stopped by stop()."""

    def __init__(self, root: Path, auth: dict[str, Any] | None = None) -> None:
        self.root = root
        self.address = f"127.0.0.1:{free_port()}"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(root / "storage")}, "delete": {"enabled": True}},
            "http": {"addr": self.address, "secret": "test"},
        }
        if auth:
            config["auth"] = auth
        (root / "config.yml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.log = (root / "registry.log").open("w")
        self.process = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(root / "config.yml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for a token
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(
                        "docker-registry did not start: " + (root / "registry.log").read_text()[-2000:]
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def push(
        self, layout: Path, tag: str, repository: str, *, all_images: bool = False, creds: str | None = None
    ) -> None:
        command = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        command += ["--all"] if all_images else []
        command += ["--dest-creds", creds] if creds else []
        result = subprocess.run(
            [*command, f"oci:{layout}:{tag}", f"docker://{self.address}/{repository}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    def blob_data(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.root / "storage/docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def layer_link(self, repository: str, digest: str) -> Path:
        return (
            self.root
            / "storage/docker/registry/v2/repositories"
            / repository
            / "_layers/sha256"
            / digest.removeprefix("sha256:")
        )


@pytest.fixture
def start_registry(tmp_path: Path) -> Iterator[Callable[..., Registry]]:
    started: list[Registry] = []

    def start(auth: dict[str, Any] | None = None) -> Registry:
        root = tmp_path / f"registry{len(started)}"
        root.mkdir()
        started.append(Registry(root, auth))
        return started[-1]

    yield start
    for registry in started:
        registry.stop()


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def tree(root: Path) -> dict[str, tuple[str, int, bytes | str | None]]:
    """Every path under root: its type, permission bits and content or link target."""
    found: dict[str, tuple[str, int, bytes | str | None]] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        rel = path.relative_to(root).as_posix()
        if stat.S_ISLNK(mode):
            found[rel] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(mode):
            found[rel] = ("dir", stat.S_IMODE(mode), None)
        else:
            found[rel] = ("file", stat.S_IMODE(mode), path.read_bytes())
    return found


def store_files(cache: Cache) -> list[str]:
    folder = cache.root / "blobs" / "sha256"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def two_layer_image(layout: Layout) -> dict[str, Any]:
    return layout.image(
        layer_tar(
            dir_("etc"),
            reg("etc/os-release", b"ID=test\n"),
            dir_("usr/bin", mode=0o750),
            reg("usr/bin/tool", b"#!/bin/sh\necho hi\n", mode=0o755),
            sym("bin", "usr/bin"),
            reg("etc/gone", b"x"),
        ),
        layer_tar(
            reg("etc/os-release", b"ID=test2\n", mode=0o600),
            whiteout("etc/.wh.gone"),
            sym("etc/link", "../usr/bin/tool"),
        ),
        compression=["gzip", "zstd"],
    )


EXPECTED_TREE = {
    "bin": ("link", 0, "usr/bin"),
    "etc": ("dir", 0o755, None),
    "etc/link": ("link", 0, "../usr/bin/tool"),
    "etc/os-release": ("file", 0o600, b"ID=test2\n"),
    "usr": ("dir", 0o755, None),
    "usr/bin": ("dir", 0o750, None),
    "usr/bin/tool": ("file", 0o755, b"#!/bin/sh\necho hi\n"),
}


@pytest.fixture
def pushed(
    start_registry: Callable[..., Registry],
    tmp_path: Path,
) -> tuple[Registry, Layout, dict[str, Any]]:
    """A registry holding test/app:v1 (two layers)."""
    registry = start_registry()
    layout = Layout()
    manifest = two_layer_image(layout)
    layout.add(manifest, tag="v1")
    registry.push(layout.write_dir(tmp_path / "layout"), "v1", "test/app:v1")
    return registry, layout, manifest


def test_pull_and_apply_gives_the_pushed_tree(
    pushed: tuple[Registry, Layout, dict[str, Any]], cache: Cache, tmp_path: Path
) -> None:
    registry, layout, manifest = pushed
    stale = cache.root / "blobs/sha256/.tmp-0123456789abcdef-x1y2z3-999999999"  # a killed pull's
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a blob")
    image = open_registry_image(f"{registry.address}/test/app:v1", cache)
    assert image.config_digest == layout.config_digest(manifest)
    assert [layer.digest for layer in image.layers] == layout.layer_digests(manifest)
    (tmp_path / "root").mkdir()
    apply_image(image, tmp_path / "root")
    assert tree(tmp_path / "root") == EXPECTED_TREE
    wanted = [d.removeprefix("sha256:") for d in [image.config_digest, *layout.layer_digests(manifest)]]
    assert store_files(cache) == sorted(wanted)  # verified blobs only, no temporary files

    by_digest = open_registry_image(f"{registry.address}/test/app@{manifest['digest']}", cache, pull="always")
    assert by_digest.config_digest == image.config_digest


def test_multi_platform_index(start_registry: Callable[..., Registry], cache: Cache, tmp_path: Path) -> None:
    registry = start_registry()
    layout = Layout()
    amd = layout.image(layer_tar(reg("arch", b"amd64")), label="amd64")
    arm = layout.image(layer_tar(reg("arch", b"arm64")), label="arm64")
    layout.add(
        layout.index(entry(amd, platform="linux/amd64"), entry(arm, platform="linux/arm64")), tag="multi"
    )
    registry.push(layout.write_dir(tmp_path / "layout"), "multi", "test/multi:1", all_images=True)
    name = f"{registry.address}/test/multi:1"
    for platform, manifest in [("linux/arm64", arm), ("linux/amd64", amd)]:
        image = open_registry_image(name, cache, platform=platform)
        assert image.config_digest == layout.config_digest(manifest)
        target = tmp_path / platform.replace("/", "-")
        target.mkdir()
        apply_image(image, target)
        assert (target / "arch").read_bytes() == platform.split("/")[1].encode()
    with pytest.raises(InputError) as error:
        open_registry_image(name, cache, platform="linux/s390x")
    assert "no image for platform linux/s390x" in str(error.value)
    assert "linux/amd64, linux/arm64" in str(error.value)


def test_pull_policies_and_the_cache(
    pushed: tuple[Registry, Layout, dict[str, Any]], cache: Cache, tmp_path: Path
) -> None:
    registry, layout, manifest = pushed
    name = f"{registry.address}/test/app:v1"
    first = open_registry_image(name, cache)
    blob = cache.root / "blobs/sha256" / first.layers[0].digest.removeprefix("sha256:")
    inode = blob.stat().st_ino
    assert open_registry_image(name, cache, pull="always").config_digest == first.config_digest
    assert blob.stat().st_ino == inode  # asked the registry, but did not download again

    registry.stop()
    start = time.monotonic()
    again = open_registry_image(name, cache, pull="missing")
    assert time.monotonic() - start < 1.0
    assert again.config_digest == first.config_digest
    assert open_registry_image(name, cache, pull="never").config_digest == first.config_digest
    (tmp_path / "root").mkdir()
    apply_image(again, tmp_path / "root")
    assert tree(tmp_path / "root") == EXPECTED_TREE

    with pytest.raises(BuildError, match="cannot reach"):
        open_registry_image(name, cache, pull="always")
    with pytest.raises(InputError, match="--pull never forbids pulling"):
        open_registry_image(f"{registry.address}/test/other:v1", cache, pull="never")

    blob.write_bytes(blob.read_bytes()[:-4] + b"oops")  # bit rot in the cache
    (tmp_path / "root2").mkdir()
    with pytest.raises(InputError, match="corrupt"):
        apply_image(open_registry_image(name, cache, pull="never"), tmp_path / "root2")


def test_unknown_tag(pushed: tuple[Registry, Layout, dict[str, Any]], cache: Cache) -> None:
    registry, _, _ = pushed
    with pytest.raises(InputError, match="no such image or tag"):
        open_registry_image(f"{registry.address}/test/app:v2", cache)
    with pytest.raises(InputError, match="no such image or tag"):
        open_registry_image(f"{registry.address}/test/nothing", cache)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated", "manifest"])
def test_broken_blob_in_the_registry(
    pushed: tuple[Registry, Layout, dict[str, Any]], cache: Cache, damage: str
) -> None:
    registry, layout, manifest = pushed
    layer = layout.layer_digests(manifest)[1]
    if damage == "missing":
        shutil.rmtree(registry.layer_link("test/app", layer))
        error: type[Exception] = InputError
        message = "lacks blob"
    elif damage == "corrupt":
        data = registry.blob_data(layer)
        data.write_bytes(bytes(b ^ 0xFF for b in data.read_bytes()))
        error, message = InputError, "does not match its digest"
    elif damage == "truncated":
        data = registry.blob_data(layer)
        data.write_bytes(data.read_bytes()[:10])
        error, message = BuildError, "stopped after 10 of"
    else:  # the manifest the tag points at, changed behind the registry's back
        data = registry.blob_data(manifest["digest"])
        data.write_bytes(data.read_bytes() + b" ")
        error, message = InputError, "manifest v1 does not match its digest"
    with pytest.raises(error, match=message):
        open_registry_image(f"{registry.address}/test/app:v1", cache)
    assert layer.removeprefix("sha256:") not in store_files(cache)
    assert not [name for name in store_files(cache) if name.startswith(".")]
    assert not list((cache.root / "refs").glob("*")) if (cache.root / "refs").exists() else True


def test_unresponsive_registry_times_out(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "TIMEOUT", 0.5)
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        with pytest.raises(BuildError, match="cannot reach the registry.*timed out"):
            open_registry_image(f"127.0.0.1:{silent.getsockname()[1]}/test/app", cache)
        assert time.monotonic() - start < 5


# Token authentication: a token server issuing RS256 JWTs whose x5c certificate is the
# registry's rootcertbundle, as distribution's token auth expects.


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    def __init__(self, root: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.bundle = root / "token-cert.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.requests: list[str] = []
        server = self

        def sign(claims: dict[str, Any]) -> str:
            header = {"alg": "RS256", "typ": "JWT", "x5c": [x5c]}
            signing = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
            signature = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
            return f"{signing}.{b64url(signature)}"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="token"')
                    self.end_headers()
                    return
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                access = []
                for scope in query.get("scope", []):
                    kind, name, actions = scope.split(":")
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
                now = int(time.time())
                token = sign(
                    {
                        "iss": "test-issuer",
                        "sub": USER,
                        "aud": query["service"][0],
                        "exp": now + 300,
                        "nbf": now - 10,
                        "iat": now,
                        "jti": hashlib.sha256(os.urandom(8)).hexdigest(),
                        "access": access,
                    }
                )
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TokenServer]:
    pytest.importorskip("cryptography")
    server = TokenServer(tmp_path)
    yield server
    server.stop()


def test_token_auth(
    start_registry: Callable[..., Registry],
    token_server: TokenServer,
    cache: Cache,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = start_registry(
        {
            "token": {
                "realm": token_server.realm,
                "service": "test-registry",
                "issuer": "test-issuer",
                "rootcertbundle": str(token_server.bundle),
            }
        }
    )
    layout = Layout()
    manifest = two_layer_image(layout)
    layout.add(manifest, tag="v1")
    registry.push(layout.write_dir(tmp_path / "layout"), "v1", "private/app:v1", creds=f"{USER}:{PASSWORD}")
    name = f"{registry.address}/private/app:v1"

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    with pytest.raises(InputError) as error:
        open_registry_image(name, cache)
    assert "access denied" in str(error.value) and "docker login" in str(error.value)

    config = tmp_path / "docker-config"
    config.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    token_server.requests.clear()
    image = open_registry_image(name, cache)
    assert image.config_digest == layout.config_digest(manifest)
    assert len(token_server.requests) == 1  # one token, reused for the manifest and every blob
    assert "scope=repository%3Aprivate%2Fapp%3Apull" in token_server.requests[0]
    (tmp_path / "root").mkdir()
    apply_image(image, tmp_path / "root")
    assert tree(tmp_path / "root") == EXPECTED_TREE


class BasicAuthProxy:
    """A registry front asking for Basic auth that sends blob GETs elsewhere, as registries
    redirect to object storage; records what Authorization the storage side was sent."""

    def __init__(self, upstream: str) -> None:
        self.storage_auth: list[str | None] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.startswith("/storage/"):
                    proxy.storage_auth.append(self.headers.get("Authorization"))
                    self.forward(self.path.removeprefix("/storage"))
                elif (
                    self.headers.get("Authorization")
                    != "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                ):
                    self.answer(401, b"", {"WWW-Authenticate": 'Basic realm="test"'})
                elif "/blobs/" in self.path:
                    self.answer(307, b"", {"Location": f"/storage{self.path}"})
                else:
                    self.forward(self.path)

            def forward(self, path: str) -> None:
                request = urllib.request.Request(f"http://{upstream}{path}")
                if self.headers.get("Accept"):
                    request.add_header("Accept", self.headers["Accept"])
                try:
                    response = urllib.request.urlopen(request, timeout=10)
                except urllib.error.HTTPError as exc:
                    response = exc
                with response:
                    headers = {
                        k: response.headers[k]
                        for k in ("Content-Type", "Docker-Content-Digest")
                        if response.headers.get(k)
                    }
                    self.answer(response.status, response.read(), headers)

            def answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_basic_auth_and_redirected_blobs(
    pushed: tuple[Registry, Layout, dict[str, Any]],
    cache: Cache,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, layout, manifest = pushed
    proxy = BasicAuthProxy(registry.address)
    try:
        name = f"{proxy.address}/test/app:v1"
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
        with pytest.raises(InputError, match="wants a login.*docker login"):
            open_registry_image(name, cache)
        write = {"auths": {f"http://{proxy.address}": {"username": USER, "password": PASSWORD}}}
        (tmp_path / "cfg").mkdir()
        (tmp_path / "cfg" / "config.json").write_text(json.dumps(write))
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "cfg"))
        image = open_registry_image(name, cache)
    finally:
        proxy.stop()
    assert image.config_digest == layout.config_digest(manifest)
    assert proxy.storage_auth == [None, None, None]  # config and two layers; no credentials leaked
