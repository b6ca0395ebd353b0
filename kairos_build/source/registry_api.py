"""The OCI distribution API, spoken with urllib: image names, login (docker's config file,
bearer tokens), manifests and blobs. Standard library only: the build pulls base images with
it (registry.py adds the cache), and the node agent pulls upgrade images.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kairos_build.core.errors import BuildError, InputError

log = logging.getLogger("kairos-build")
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}

DOCKER_HUB = "registry-1.docker.io"
_HUB_NAMES = {"docker.io", "index.docker.io", DOCKER_HUB}
TIMEOUT = 30.0  # seconds, for connecting and for every read
CHUNK = 1 << 20  # bytes per read of a blob
_MAX_JSON = 4 << 20
_ACCEPT = ", ".join(sorted(INDEX_TYPES | MANIFEST_TYPES))
_DENIED_HINT = (
    "check the name; if the image is private, log in with docker login or put "
    "credentials in ~/.docker/config.json"
)
_NAME_HINT = "use [REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST], e.g. debian:trixie or quay.io/org/image:1.0"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
_PARAM = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


@dataclass(frozen=True)
class ImageName:
    registry: str  # host[:port]; Docker Hub is registry-1.docker.io
    repository: str  # library/debian
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What the manifest is fetched by: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        return f"{self.registry}/{self.repository}{tag}" + (f"@{self.digest}" if self.digest else "")


def parse_image_name(name: str) -> ImageName:
    """A docker-style image reference: `debian` means registry-1.docker.io/library/debian:latest."""

    def bad(why: str) -> InputError:
        return InputError(f"{name!r} is not a valid image name: {why}", hint=_NAME_HINT)

    text = name.strip().removeprefix("docker://")
    if not text:
        raise bad("it is empty")
    text, at, digest = text.partition("@")
    if at and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise bad("a digest is sha256: followed by 64 lowercase hex digits")
    first, slash, rest = text.partition("/")
    if slash and (first == "localhost" or any(c in first for c in ".:[")):
        registry, path = first, rest
        if not _HOST.fullmatch(registry) or int(registry.rpartition("]")[2].partition(":")[2] or 0) > 65535:
            raise bad(f"{registry!r} is not a registry HOST[:PORT]")
    else:
        registry, path = "docker.io", text
    path, colon, tag = path.partition(":")
    if colon and not _TAG.fullmatch(tag):
        raise bad(f"{tag!r} is not a valid tag")
    if not _REPOSITORY.fullmatch(path):
        raise bad("a repository is lowercase letters, digits and . _ - in /-separated parts")
    if registry in _HUB_NAMES:
        registry = DOCKER_HUB
        path = path if "/" in path else f"library/{path}"
    return ImageName(registry, path, tag if colon else None if at else "latest", digest or None)


def parse_www_authenticate(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` -> ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        key.lower(): re.sub(r"\\(.)", r"\1", quoted) if quoted else bare
        for key, quoted, bare in _PARAM.findall(rest)
    }
    return scheme.lower(), params


def docker_credentials(registry: str) -> tuple[str, str] | None:
    """User and password for `registry` from the docker config file, if it holds any."""
    folder = os.environ.get("DOCKER_CONFIG")
    path = Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read the registry credentials in {path}: {exc}",
            hint="fix the file or log in again with docker login",
        ) from exc
    auths = config.get("auths") if isinstance(config, dict) else None
    wanted = _HUB_NAMES if registry == DOCKER_HUB else {registry}
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if re.sub(r"^[a-z]+://", "", key).split("/", 1)[0] not in wanted or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError as exc:
                raise InputError(
                    f"{path}: the auth entry for {key} is not base64 of user:password",
                    hint="log in again with docker login",
                ) from exc
            if sep:
                return user, password
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
    if isinstance(config, dict) and (config.get("credsStore") or config.get("credHelpers")):
        log.warning(
            "%s names docker credential helpers, which kairos-build does not run; it reads "
            "only the auths entries",
            path,
        )
    return None


def plain_http(registry: str, insecure: tuple[str, ...]) -> bool:
    host = registry[1:].partition("]")[0] if registry.startswith("[") else registry.partition(":")[0]
    if registry in insecure or host in insecure or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """One registry session: the token it earned is reused for every request of the pull."""

    def __init__(self, name: ImageName, where: str, insecure: tuple[str, ...]) -> None:
        scheme = "http" if plain_http(name.registry, insecure) else "https"
        self.base = f"{scheme}://{name.registry}/v2/"
        self.name = name
        self.where = where
        self.authorization: str | None = None
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=ssl.create_default_context())
        )

    def _open(
        self,
        request: urllib.request.Request,
        what: str,
        missing: str,
        challenge_ok: bool = False,
    ) -> http.client.HTTPResponse | str:
        """The response, or the challenge of a 401 when `challenge_ok`; failures as one clear error."""
        try:
            response: http.client.HTTPResponse = self.opener.open(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            challenge = exc.headers.get("WWW-Authenticate", "")
            exc.close()
            if exc.code == 401 and challenge and challenge_ok:
                return str(challenge)
            if exc.code in (401, 403):
                raise InputError(
                    f"{self.where}: access denied by {self.name.registry}", hint=_DENIED_HINT
                ) from None
            if exc.code == 404:
                raise InputError(f"{self.where}: {missing}", hint="check the image name and tag") from None
            raise BuildError(
                f"{self.where}: {what} answered {exc.code} {exc.reason}",
                hint="it has a problem; try again later",
            ) from None
        except _NETWORK_ERRORS as exc:
            reason = getattr(exc, "reason", exc)
            hint = (
                "if it uses a private CA, add it to the system CA store, or list the registry as insecure"
                if isinstance(reason, ssl.SSLError)
                else "check the name, your network and proxy settings, then try again"
            )
            raise BuildError(f"{self.where}: cannot reach {what}: {reason}", hint=hint) from exc
        return response

    def get(self, path: str, missing: str, accept: str | None = None) -> http.client.HTTPResponse:
        """GET a registry URL, authenticating once when challenged (again when a token expires)."""
        for attempt in range(2):
            request = urllib.request.Request(self.base + path)  # noqa: S310 (always http/https)
            if accept:
                request.add_header("Accept", accept)
            if self.authorization:  # unredirected: blob storage behind a redirect must not see it
                request.add_unredirected_header("Authorization", self.authorization)
            answer = self._open(request, f"the registry {self.name.registry}", missing, attempt == 0)
            if not isinstance(answer, str):
                return answer
            self._authenticate(answer)
        raise AssertionError("unreachable")

    def _authenticate(self, challenge: str) -> None:
        scheme, params = parse_www_authenticate(challenge)
        credentials = docker_credentials(self.name.registry)
        basic = "Basic " + base64.b64encode(":".join(credentials).encode()).decode() if credentials else None
        if scheme == "basic":
            if basic is None:
                raise InputError(f"{self.where}: {self.name.registry} wants a login", hint=_DENIED_HINT)
            self.authorization = basic
            return
        realm = params.get("realm", "")
        if scheme != "bearer" or not realm.startswith(("https://", "http://")):
            raise BuildError(
                f"{self.where}: {self.name.registry} asks for an unsupported login ({challenge[:80]})",
                hint="pull it with docker or skopeo instead",
            )
        query = {"scope": params.get("scope") or f"repository:{self.name.repository}:pull"}
        query |= {"service": params["service"]} if "service" in params else {}
        request = urllib.request.Request(  # noqa: S310 (checked above)
            realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        )
        if basic:
            request.add_unredirected_header("Authorization", basic)
        response = self._open(request, f"the token server {realm}", f"no token server at {realm}")
        assert not isinstance(response, str)
        with response:
            try:
                answer = json.loads(self.read(response, _MAX_JSON))
            except ValueError:
                answer = None
        token = (answer.get("token") or answer.get("access_token")) if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise BuildError(f"{self.where}: the token server {realm} sent no token", hint="try again later")
        self.authorization = f"Bearer {token}"

    def read(self, response: http.client.HTTPResponse, size: int) -> bytes:
        try:
            return response.read(size)
        except _NETWORK_ERRORS as exc:
            raise BuildError(
                f"{self.where}: the download from {self.name.registry} broke off: {exc}", hint="try again"
            ) from exc

    def manifest(self, reference: str) -> bytes:
        """A manifest or index by tag or digest, verified against the digest it is known by."""
        with self.get(
            f"{self.name.repository}/manifests/{reference}", "no such image or tag", _ACCEPT
        ) as response:
            data = self.read(response, _MAX_JSON + 1)
            claimed = response.headers.get("Docker-Content-Digest") or ""
        if len(data) > _MAX_JSON:
            raise InputError(f"{self.where}: the manifest {reference} is too large")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        expected = reference if reference.startswith("sha256:") else claimed
        if expected.startswith("sha256:") and expected != digest:
            raise InputError(
                f"{self.where}: the manifest {reference} does not match its digest {expected}",
                hint="the registry or a proxy corrupted it; try again",
            )
        return data
