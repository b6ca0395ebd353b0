"""The gates that keep the code clean run with the tests, so CI fails when one does: ruff's
lint and format check and mypy --strict over the Python, shellcheck over every shell script
in the repository (found by its first line or its name, so a new one is checked without being
listed). Each runs the real tool from the repository root and shows what it said."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ("kairos_build", "tests", "benchmarks")
# Not ours, or copies of ours: the virtualenv, gitlab-ci-local's node modules, the build's
# copy of the data folders (setup.py), caches.
SKIPPED_PATHS = {".git", ".venv", ".ci-tools", "build", "kairos_build/data"}
SKIPPED_NAMES = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "node_modules"}
# #!/bin/sh, #!/bin/bash -e, #!/usr/bin/env bash, #!/usr/bin/env -S dash -e ...
SHELL_SHEBANG = re.compile(rb"#!\s*(?:\S*/)?(?:env\s+(?:-\S+\s+)*)?(?:sh|bash|dash)(?:\s|$)")


def run(*argv: str) -> str:
    """The tool's exit status must be 0; its output is the assertion's message."""
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    output = f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}"
    status = result.returncode
    assert status == 0, output
    return output


def shell_scripts() -> list[str]:
    """Every file whose first line is a sh, bash or dash shebang, or whose name ends in .sh,
    relative to the repository root."""
    found = []
    for top, dirs, names in os.walk(ROOT):
        here = Path(top).relative_to(ROOT)
        dirs[:] = sorted(
            d for d in dirs if d not in SKIPPED_NAMES and (here / d).as_posix() not in SKIPPED_PATHS
        )
        for name in names:
            path = Path(top, name)
            if path.is_symlink() or not path.is_file():
                continue
            with path.open("rb") as handle:
                first = handle.readline(256)
            if name.endswith(".sh") or SHELL_SHEBANG.match(first):
                found.append((here / name).as_posix())
    return sorted(found)


def test_the_shell_scripts_are_found() -> None:
    """The finder cannot silently find nothing: the scripts every image runs are among them."""
    found = shell_scripts()
    dracut = "overlays/common/usr/lib/dracut/modules.d/90kairos-immutable"
    expected = {
        "overlays/common/usr/lib/kairos/boot-report",
        "overlays/common/usr/lib/systemd/system-generators/kairos-efi-generator",
        *(f"{dracut}/{name}" for name in os.listdir(ROOT / dracut) if name.endswith(".sh")),
        f"{dracut}/module-setup.sh",
        f"{dracut}/kairos-immutable-setup.sh",
        f"{dracut}/kairos-sealed.sh",
        "ci/setup.sh",
        ".ci/run",
    }
    assert expected <= set(found), sorted(expected - set(found))
    assert "overlays/common/usr/bin/kairos-agent" not in found, "a python3 script is not a shell script"


def test_ruff_check() -> None:
    run(sys.executable, "-m", "ruff", "check", *PYTHON, "setup.py")


def test_ruff_format() -> None:
    run(sys.executable, "-m", "ruff", "format", "--check", *PYTHON, "setup.py")


def test_mypy_strict() -> None:
    # The settings are pyproject.toml's [tool.mypy].
    run(sys.executable, "-m", "mypy", "--strict", *PYTHON)


def test_shellcheck() -> None:
    """Each script in the dialect its shebang names (or a `# shellcheck shell=` directive),
    following what it sources (`# shellcheck source=`). No rc file: the gate is the same
    everywhere."""
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: apt-get install shellcheck (ci/setup.sh --dev installs it)")
    run("shellcheck", "--norc", "--external-sources", *shell_scripts())
