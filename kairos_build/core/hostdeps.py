"""Install the host programs kairos-build drives (`kairos-build install-deps`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kairos_build.core.errors import InputError
from kairos_build.core.log import step
from kairos_build.core.tools import APT_HOST_PACKAGES, TOOL_PACKAGES, run


def is_apt_host() -> bool:
    return Path("/etc/debian_version").exists() and shutil.which("apt-get") is not None


def describe_packages() -> str:
    """What to install on a host we cannot install on ourselves: programs and Debian names."""
    lines = ["kairos-build needs these programs (Debian/Ubuntu package in brackets):"]
    lines += [f"  {tool} [{package}]" for tool, package in sorted(TOOL_PACKAGES.items())]
    file_packages = sorted(set(APT_HOST_PACKAGES) - set(TOOL_PACKAGES.values()))
    lines.append("and the files of: " + ", ".join(file_packages))
    return "\n".join(lines)


def install_host_packages() -> list[str]:
    """apt-get install everything; return the package names."""
    if os.geteuid() != 0:
        raise InputError("installing host packages needs root", hint="run it with sudo")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    with step(f"installing {len(APT_HOST_PACKAGES)} host packages with apt"):
        run(["apt-get", "update", "-q"], env=env, timeout=1800)
        run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_HOST_PACKAGES],
            env=env,
            timeout=3600,
        )
    return list(APT_HOST_PACKAGES)
