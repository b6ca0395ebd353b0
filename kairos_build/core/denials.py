"""Say why a command failed in the conversion sandbox: which command, which package's script,
and what the sandbox refused it, instead of a bare exit code of the sandbox tool."""

from __future__ import annotations

import re
from collections.abc import Sequence

from kairos_build.core.errors import BuildError

# A package script that failed, as each package manager reports it: (package, what failed).
_SCRIPT_FAILURES = (
    # dpkg: " installed foo package post-installation script subprocess returned error exit
    # status 1" (also new/old, pre-/post-installation/removal)
    (
        re.compile(
            r"(?:installed|new|old) (\S+) package ((?:pre|post)-(?:installation|removal) "
            r"script) subprocess returned error exit status (\d+)"
        ),
        "{1}",
    ),
    # rpm: "error: %post(foo-1.0-1.x86_64) scriptlet failed, exit status 1"
    (re.compile(r"%(\w+)\((\S+)\) scriptlet failed, exit status (\d+)"), "%{0} scriptlet"),
    # apk: "ERROR: foo-1.0-r0.post-install: script exited with error 1"
    (
        re.compile(
            r"(\S+?)\.((?:pre|post)-(?:install|upgrade|deinstall)): script exited with "
            r"error (\d+)"
        ),
        "{1} script",
    ),
)
# Messages of a call the sandbox refused (EPERM, EACCES, EROFS, tools' own wording).
_DENIED = re.compile(
    r"operation not permitted|permission denied|read-only file system|"
    r"must be root|cannot open .*/dev/|no such device",
    re.IGNORECASE,
)
_SANDBOX_HINT = (
    "package scripts run in the conversion sandbox, without mount, device "
    "nodes, kernel modules, /sys or writes to /proc/sys (docs/conversion.md: 'The conversion "
    "sandbox'); a script that needs them cannot run while the image is built"
)


def failed_scripts(output: str) -> list[str]:
    """'package foo: post-installation script (exit status 1)' for each failed script."""
    found: list[str] = []
    for pattern, what in _SCRIPT_FAILURES:
        for match in pattern.finditer(output):
            groups = match.groups()
            if what.startswith("%"):  # rpm names the scriptlet first, then the package
                package, label = groups[1], what.format(groups[0])
            else:
                package, label = groups[0], what.format(*groups)
            line = f"package {package}: {label} failed (exit status {groups[2]})"
            if line not in found:
                found.append(line)
    return found


def denied_lines(output: str, limit: int = 5) -> list[str]:
    lines: list[str] = []
    for line in output.splitlines():
        line = line.strip()
        if _DENIED.search(line) and line not in lines:
            lines.append(line)
    return lines[:limit]


def explain_failure(cmd: Sequence[str], returncode: int, output: str) -> BuildError:
    """One readable error: the command, the packages whose scripts failed, the refusals."""
    parts = [f"'{' '.join(cmd)}' failed in the conversion sandbox (exit code {returncode})"]
    parts += [f"  {line}" for line in failed_scripts(output)]
    denied = denied_lines(output)
    if denied:
        parts.append("  refused by the sandbox:")
        parts += [f"    {line}" for line in denied]
    tail = output.strip().splitlines()[-15:]
    if tail:
        parts.append("  last lines:")
        parts += [f"    {line}" for line in tail]
    return BuildError("\n".join(parts), hint=_SANDBOX_HINT if denied else None)
