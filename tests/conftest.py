"""Shared fixtures. The integration tiers build one real Debian trixie ISO per session.

The bootstrapped and converted rootfs are kept in a cache directory between runs
(KAIROS_BUILD_TEST_CACHE, default ~/.cache/kairos-build-tests), so a second run rebuilds only
what changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 1800,
            ) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as a user would, and capture what it prints."""
    return subprocess.run([sys.executable, "-m", "kairos_build", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          check=False)


@pytest.fixture(scope="session")
def test_cache() -> Path:
    path = Path(os.environ.get("KAIROS_BUILD_TEST_CACHE",
                               Path.home() / ".cache" / "kairos-build-tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def built_iso(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`kairos-build iso` on a real mmdebstrap'ed trixie: the ISO and the build's stderr."""
    out = tmp_path_factory.mktemp("iso-out")
    result = run_cli("iso", "--flavor", "debian", "--base", "bootstrap:debian/trixie",
                     "--output", str(out), "--cache-dir", str(test_cache))
    assert result.returncode == 0, result.stderr[-4000:]
    isos = list(out.glob("*.iso"))
    assert len(isos) == 1, list(out.iterdir())
    return isos[0], result.stderr
