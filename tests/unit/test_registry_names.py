"""Image names (docker's rules), WWW-Authenticate challenges and docker config credentials."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from kairos_build.core.errors import InputError
from kairos_build.source.registry_api import (
    ImageName,
    docker_credentials,
    parse_image_name,
    parse_www_authenticate,
    plain_http,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("debian", ImageName("registry-1.docker.io", "library/debian", "latest", None)),
        ("debian:trixie", ImageName("registry-1.docker.io", "library/debian", "trixie", None)),
        ("docker.io/x/y:t", ImageName("registry-1.docker.io", "x/y", "t", None)),
        ("docker.io/ubuntu", ImageName("registry-1.docker.io", "library/ubuntu", "latest", None)),
        (
            "index.docker.io/library/alpine:3.20",
            ImageName("registry-1.docker.io", "library/alpine", "3.20", None),
        ),
        ("user/image", ImageName("registry-1.docker.io", "user/image", "latest", None)),
        (f"quay.io/a/b@{DIGEST}", ImageName("quay.io", "a/b", None, DIGEST)),
        (f"quay.io/a/b:1.0@{DIGEST}", ImageName("quay.io", "a/b", "1.0", DIGEST)),
        ("127.0.0.1:5000/foo:bar", ImageName("127.0.0.1:5000", "foo", "bar", None)),
        ("localhost/foo", ImageName("localhost", "foo", "latest", None)),
        ("localhost:5000/a/b/c", ImageName("localhost:5000", "a/b/c", "latest", None)),
        ("[::1]:5000/foo:x", ImageName("[::1]:5000", "foo", "x", None)),
        (
            "ghcr.io/org/my-image_v2.x:v1.2.3-rc_1",
            ImageName("ghcr.io", "org/my-image_v2.x", "v1.2.3-rc_1", None),
        ),
        ("docker://opensuse/leap:15.6", ImageName("registry-1.docker.io", "opensuse/leap", "15.6", None)),
    ],
)
def test_parse_image_name(name: str, expected: ImageName) -> None:
    assert parse_image_name(name) == expected


def test_reference_and_str() -> None:
    assert parse_image_name("debian").reference == "latest"
    assert parse_image_name(f"quay.io/a/b:1@{DIGEST}").reference == DIGEST
    assert str(parse_image_name("debian:13")) == "registry-1.docker.io/library/debian:13"
    assert str(parse_image_name(f"quay.io/a/b@{DIGEST}")) == f"quay.io/a/b@{DIGEST}"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "Debian",
        "debian:",
        "debian:tag:more",
        "debian:-bad",
        "debian@sha256:abc",
        f"debian@md5:{'a' * 32}",
        "quay.io/",
        "quay.io/a//b",
        "a/-b",
        "foo bar",
        "debian/",
        "host:99999/x",
        "-host.io/x",
        "docker.io/UPPER/case",
        "a" + ":t" * 2,
        "x/y:" + "t" * 129,
    ],
)
def test_malformed_names(name: str) -> None:
    with pytest.raises(InputError) as error:
        parse_image_name(name)
    assert "not a valid image name" in str(error.value)
    assert error.value.hint and "debian:trixie" in error.value.hint


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/debian:pull"',
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/debian:pull",
            },
        ),
        (
            'Bearer realm="https://q.io/v2/auth", service="quay.io", scope="repository:a/b:pull,push"',
            "bearer",
            {"realm": "https://q.io/v2/auth", "service": "quay.io", "scope": "repository:a/b:pull,push"},
        ),
        (
            "bearer Realm=http://127.0.0.1:8000/token,service=test",
            "bearer",
            {"realm": "http://127.0.0.1:8000/token", "service": "test"},
        ),
        ('Basic realm="Registry Realm"', "basic", {"realm": "Registry Realm"}),
        ('Basic realm="say \\"hi\\""', "basic", {"realm": 'say "hi"'}),
        ("Basic", "basic", {}),
    ],
)
def test_parse_www_authenticate(header: str, scheme: str, params: dict[str, str]) -> None:
    assert parse_www_authenticate(header) == (scheme, params)


def write_config(folder: Path, auths: dict[str, object]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"auths": auths}))


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_docker_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "cfg"))
    assert docker_credentials("quay.io") is None  # no config file at all
    write_config(
        tmp_path / "cfg",
        {
            "https://index.docker.io/v1/": {"auth": encoded("hubuser:hub:pass")},
            "quay.io": {"auth": encoded("q:p")},
            "http://127.0.0.1:5000": {"username": "u", "password": "pw"},
            "other.io": {"auth": ""},
        },
    )
    assert docker_credentials("registry-1.docker.io") == ("hubuser", "hub:pass")
    assert docker_credentials("quay.io") == ("q", "p")
    assert docker_credentials("127.0.0.1:5000") == ("u", "pw")
    assert docker_credentials("other.io") is None
    assert docker_credentials("ghcr.io") is None

    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_config(tmp_path / "home", {})
    (tmp_path / "home" / ".docker").mkdir()
    write_config(tmp_path / "home" / ".docker", {"docker.io": {"auth": encoded("a:b")}})
    assert docker_credentials("registry-1.docker.io") == ("a", "b")


def test_broken_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read the registry credentials"):
        docker_credentials("quay.io")
    write_config(tmp_path, {"quay.io": {"auth": "!!!not base64"}})
    with pytest.raises(InputError, match="not base64"):
        docker_credentials("quay.io")


@pytest.mark.parametrize(
    ("registry", "plain"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.3.2.1", True),
        ("[::1]:5000", True),
        ("quay.io", False),
        ("10.0.0.5:5000", False),
        ("registry.lan:5000", True),
        ("registry.lan:6000", False),
        ("plain.lan:1234", True),
    ],
)
def test_plain_http_only_for_loopback_and_insecure(registry: str, plain: bool) -> None:
    assert plain_http(registry, ("registry.lan:5000", "plain.lan")) is plain
