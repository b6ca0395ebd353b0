"""`kairos-build convert`: the converted image as an OCI archive and in a docker daemon, then
used as a base again (recognised as converted, not converted twice)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration.test_docker_daemon import dockerd  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration


def test_convert_to_oci_archive_then_build_from_it(
    test_cache: Path, tmp_path: Path, built_iso: tuple[Path, str]
) -> None:
    archive = tmp_path / "converted.tar"
    result = run_cli(
        "convert",
        "bootstrap:debian/trixie",
        "-o",
        f"oci-archive:{archive}:v1",
        "--cache-dir",
        str(test_cache),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing cached converted" in result.stderr  # the session's conversion, not a new one
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left

    tree = tmp_path / "tree"
    unpacked = run_cli(
        "unpack", f"oci-archive:{archive}:v1", str(tree), "--cache-dir", str(tmp_path / "cache")
    )
    assert unpacked.returncode == 0, unpacked.stderr
    assert 'KAIROS_FLAVOR="debian"' in (tree / "etc/kairos-release").read_text()
    assert os.readlink(tree / "boot/vmlinuz").startswith("vmlinuz-")

    again = run_cli(
        "iso",
        "--base",
        f"oci-archive:{archive}:v1",
        "--output",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already a Kairos image" in again.stderr and "installing" not in again.stderr
    assert len(list((tmp_path / "out").glob("*.iso"))) == 1

    exists = run_cli(
        "convert", "bootstrap:debian/trixie", "-o", f"oci-archive:{archive}", "--cache-dir", str(test_cache)
    )
    assert exists.returncode == 2 and "exists already" in exists.stderr


def test_convert_into_the_docker_daemon_then_build_from_it(
    test_cache: Path,
    tmp_path: Path,
    dockerd: str,  # noqa: F811
    built_iso: tuple[Path, str],
) -> None:
    env = {"DOCKER_HOST": dockerd}
    result = run_cli(
        "convert",
        "bootstrap:debian/trixie",
        "-o",
        "docker://kairos/converted:test",
        "--cache-dir",
        str(test_cache),
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    built = run_cli(
        "iso",
        "--base",
        "docker://kairos/converted:test",
        "--output",
        str(tmp_path),
        "--cache-dir",
        str(tmp_path / "cache"),
        env=env,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert "docker image kairos/converted:test" in built.stderr
    assert "already a Kairos image" in built.stderr
