"""Images from the local docker daemon (the `docker build` flow), through the docker SDK.

The daemon is reached as the docker CLI would (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH).
An image is never run: `docker save`'s stream is written to a file in the caller's work
directory and read from there as a docker archive, every layer checked against its diff_id.
"""

from __future__ import annotations

import dataclasses
from contextlib import closing
from pathlib import Path
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound

from kairos_build.core.errors import InputError
from kairos_build.core.log import log, progress
from kairos_build.source.docker_archive import normalize_name, open_docker_archive
from kairos_build.source.image import Image
from kairos_build.source.refs import PULL_POLICIES

_PING_TIMEOUT = 3
# Seconds one read from the daemon may take: a pull or a save of a large image is slow.
_WORK_TIMEOUT = 600
_UNREACHABLE = (DockerException, requests.exceptions.RequestException, OSError)


def _client(timeout: float) -> Any:
    """A client for the daemon the environment names; it asks the API version, so it connects."""
    return docker.from_env(timeout=timeout)


def daemon_available() -> bool:
    """Whether a docker daemon answers, within a few seconds; never raises."""
    try:
        with closing(_client(_PING_TIMEOUT)) as client:
            return bool(client.ping())
    except _UNREACHABLE as exc:
        log.debug("no docker daemon: %s", exc)
        return False


def local_image_id(name: str) -> str | None:
    """The config digest (docker's image ID) of a local image, or None; never raises.

    Lets the caller reuse a rootfs it already unpacked without exporting the image again.
    """
    try:
        with closing(_client(_PING_TIMEOUT)) as client:
            image_id = client.images.get(name).id
    except (*_UNREACHABLE, ImageNotFound, APIError):
        return None
    return str(image_id) if isinstance(image_id, str) and image_id.startswith("sha256:") else None


def _platform_of(image: Any) -> str:
    attrs = image.attrs
    found = f"{attrs.get('Os') or '?'}/{attrs.get('Architecture') or '?'}"
    return f"{found}/{attrs['Variant']}" if attrs.get("Variant") else found


def _check_platform(image: Any, name: str, platform: str) -> None:
    os_name, _, arch = platform.partition("/")
    arch = arch.partition("/")[0]
    if (image.attrs.get("Os"), image.attrs.get("Architecture")) != (os_name, arch):
        raise InputError(
            f"docker image {name} is for {_platform_of(image)}, not the requested {platform}",
            hint=f"pull it with `docker pull --platform {platform} "
            f"{name}` or choose --platform {_platform_of(image)}",
        )


def _get(client: Any, name: str, pull: str, platform: str) -> Any:
    """The daemon's image `name`, pulled first as `pull` (docker's --pull meaning) says."""
    if pull not in PULL_POLICIES:
        raise InputError(f"unknown pull policy {pull!r}", hint=f"use one of {', '.join(PULL_POLICIES)}")
    if pull != "always":
        try:
            return client.images.get(name)
        except ImageNotFound:
            if pull == "never":
                raise InputError(
                    f"image {name} is not in the docker daemon and --pull never forbids pulling",
                    hint="pull it first, or use --pull missing",
                ) from None
    log.info("  pulling %s (%s) with the docker daemon", name, platform)
    try:
        return client.images.pull(name, platform=platform)
    except APIError as exc:
        raise InputError(
            f"docker cannot pull {name}: {_explain(exc)}",
            hint="check the name, the tag and the network; `docker login` for a private image",
        ) from None


def _explain(exc: Exception) -> str:
    """The daemon's own words, without the SDK's request URL."""
    if isinstance(exc, APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc)


def _export(client: Any, image: Any, name: str, file: Path) -> str | None:
    """`docker save` of the image into `file`; returns the tag it was saved under, if any."""
    tag = next((t for t in image.tags if normalize_name(t) == normalize_name(name)), None)
    with file.open("wb") as out, progress(image.attrs.get("Size"), f"exporting {name}") as bar:
        for chunk in image.save(named=tag or False):
            out.write(chunk)
            bar.update(len(chunk))
    return tag


def open_daemon_image(
    name: str, workdir: Path, *, pull: str = "missing", platform: str = "linux/amd64"
) -> Image | None:
    """The image `name` from the docker daemon, exported to `workdir` (which the caller owns
    and deletes). None when no daemon answers, so the caller can try a registry instead."""
    try:
        client = _client(_WORK_TIMEOUT)
        client.ping()
    except _UNREACHABLE as exc:
        log.debug("no docker daemon: %s", exc)
        return None
    with closing(client):
        try:
            image = _get(client, name, pull, platform)
            _check_platform(image, name, platform)
            tag = _export(client, image, name, workdir / "docker-save.tar")
        except APIError as exc:
            raise InputError(
                f"docker daemon: {name}: {_explain(exc)}",
                hint="check the image name, and that the daemon works (`docker image inspect NAME`)",
            ) from None
        except (DockerException, requests.exceptions.RequestException) as exc:
            raise InputError(
                f"lost the docker daemon while reading {name}: {exc}",
                hint="is dockerd still running? (DOCKER_HOST names it)",
            ) from None
    archive = open_docker_archive(workdir / "docker-save.tar", tag, platform)
    return dataclasses.replace(archive, description=f"docker image {name}")
