"""The versions of what a build ran on the host: each program by the Debian package that owns
it (dpkg knows exactly), else by what it says of itself; and our Python dependencies, whose
code writes some bytes of an artifact too (pycdlib, the ISO's directory records)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata

from kairos_build import __version__


def _owners(paths: list[str]) -> dict[str, str]:
    """Which installed package owns each path ({} without dpkg)."""
    if not paths or not shutil.which("dpkg-query"):
        return {}
    # A merged-/usr host registers some programs under /bin: ask for both names.
    asked = {p: p for p in paths} | {p.removeprefix("/usr"): p for p in paths if p.startswith("/usr/")}
    result = subprocess.run(
        ["dpkg-query", "-S", *asked], capture_output=True, text=True, check=False, timeout=60
    )
    owners = {}
    for line in result.stdout.splitlines():
        package, sep, path = line.partition(": ")
        if sep and path in asked and "," not in package:  # "a, b: /dir" is a shared folder
            owners[asked[path]] = package
    return owners


def _package_versions(packages: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(packages))
    if not wanted:
        return {}
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${binary:Package} ${Version}\\n", *wanted],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    versions = {}
    for line in result.stdout.splitlines():
        name, _, version = line.partition(" ")
        versions[name] = version
        versions[name.split(":")[0]] = version
    return versions


def _says(path: str) -> str:
    """The first line a program prints of its version, or "unknown"."""
    for flag in ("--version", "-version", "-V"):
        try:
            result = subprocess.run(
                [path, flag],
                capture_output=True,
                text=True,
                check=False,
                timeout=10,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (result.stdout or result.stderr).strip()
        if result.returncode == 0 and text:
            return text.splitlines()[0][:200]
    return "unknown"


@functools.cache
def tool_versions(tools: tuple[str, ...]) -> dict[str, str]:
    """tool -> "PACKAGE VERSION" (or the tool's own words; "missing" when not installed)."""
    found = {tool: shutil.which(tool) for tool in tools}
    paths = sorted({os.path.realpath(p) for p in found.values() if p} | {p for p in found.values() if p})
    owners = _owners(paths)
    versions = _package_versions(owners.values())
    record = {}
    for tool, path in sorted(found.items()):
        if path is None:
            record[tool] = "missing"
            continue
        owner = owners.get(path) or owners.get(os.path.realpath(path))
        version = versions.get(owner.split(":")[0]) if owner else None
        record[tool] = f"{owner.split(':')[0]} {version}" if owner and version else _says(path)
    return record


@functools.cache
def python_versions() -> dict[str, str]:
    """Python and kairos-build's own dependencies (as installed), by name."""
    record = {"python": sys.version.split()[0], "kairos-build": __version__}
    try:
        requirements = metadata.requires("kairos-build") or []
    except metadata.PackageNotFoundError:  # a source checkout on PYTHONPATH
        requirements = []
    for requirement in requirements:
        if "extra ==" in requirement:
            continue
        name = requirement.split(";")[0].split("[")[0]
        for stop in "<>=!~ ":
            name = name.split(stop)[0]
        try:
            record[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            record[name] = "missing"
    return record
