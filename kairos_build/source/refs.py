"""Base references: what the user passes as --base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kairos_build.core.errors import InputError

TRANSPORTS = ("docker", "oci", "oci-archive", "docker-archive", "dir", "bootstrap")
# When a base is fetched anew (--pull), and the platforms a multi-platform image is read for.
PULL_POLICIES = ("missing", "always", "never")
PLATFORMS = ("linux/amd64", "linux/arm64")


@dataclass(frozen=True)
class BaseRef:
    """A parsed base reference. `target` is an image name, a path or DISTRO/SUITE."""

    transport: str
    target: str
    tag: str | None = None

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.target}"
        suffix = f":{self.tag}" if self.tag else ""
        return f"{self.transport}:{self.target}{suffix}"


def _split_path_tag(value: str) -> tuple[str, str | None]:
    """`PATH[:TAG]`: the tag is what follows the last ':' unless that is part of a real path."""
    path, sep, tag = value.rpartition(":")
    if not sep or "/" in tag or not path or Path(value).exists():
        return value, None
    return path, tag


def parse_ref(ref: str) -> BaseRef:
    """Parse a --base value; a malformed one says which forms are accepted."""
    ref = ref.strip()
    if not ref:
        raise InputError("empty --base reference", hint=_FORMS)
    if ref.startswith("docker://"):
        name = ref[len("docker://") :]
        if not name:
            raise InputError(f"--base {ref!r} names no image", hint=_FORMS)
        return BaseRef("docker", name)
    transport, sep, rest = ref.partition(":")
    if sep and transport in TRANSPORTS and transport != "docker":
        if not rest:
            raise InputError(f"--base {ref!r} has nothing after '{transport}:'", hint=_FORMS)
        if transport == "bootstrap":
            distro, slash, suite = rest.partition("/")
            if not slash or not distro or not suite:
                raise InputError(f"--base {ref!r}: expected bootstrap:DISTRO/SUITE", hint=_FORMS)
            return BaseRef("bootstrap", f"{distro}/{suite}")
        if transport in ("oci", "oci-archive"):
            path, tag = _split_path_tag(rest)
            return BaseRef(transport, path, tag)
        return BaseRef(transport, rest)
    if "/" in ref.split(":")[0] and Path(ref).exists():
        raise InputError(f"--base {ref!r} is a path", hint="say what it is: dir:, oci:, oci-archive:")
    # A bare NAME[:TAG] means an image, as with docker.
    return BaseRef("docker", ref)


_FORMS = (
    "use docker://NAME[:TAG], NAME[:TAG], oci:DIR[:TAG], oci-archive:FILE[:TAG], "
    "docker-archive:FILE, dir:PATH or bootstrap:DISTRO/SUITE"
)
