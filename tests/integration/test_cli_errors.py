"""Bad input: one readable error, the documented exit code, nothing left at the output path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def assert_one_error(stderr: str, *needles: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in stderr, stderr


def test_unknown_flavor(tmp_path: Path) -> None:
    result = run_cli("iso", "--flavor", "nosuchos", "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert_one_error(
        result.stderr,
        "unknown flavor 'nosuchos'",
        "known flavors: almalinux, alpine, debian, fedora, opensuse, rockylinux, ubuntu",
    )
    assert not (tmp_path / "out").exists()


def test_unknown_release(tmp_path: Path) -> None:
    result = run_cli("iso", "--flavor", "debian", "--release", "hamm", "--output", str(tmp_path))
    assert result.returncode == 2
    assert_one_error(result.stderr, "no release 'hamm'", "bookworm", "trixie")


@pytest.mark.parametrize(
    "base",
    [
        "dir:/nonexistent/rootfs",
        "oci:/nonexistent/layout",
        "oci-archive:/nonexistent/image.tar",
        "bootstrap:fedora/40",
        "dir:",
    ],
)
def test_unreadable_base(tmp_path: Path, base: str) -> None:
    out = tmp_path / "out"
    result = run_cli(
        "iso",
        "--flavor",
        "debian",
        "--base",
        base,
        "--output",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 2, result.stderr
    assert_one_error(result.stderr)
    assert not out.exists() or not any(out.iterdir())


def test_corrupt_oci_archive(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(os.urandom(50_000))
    out = tmp_path / "out"
    result = run_cli(
        "iso",
        "--base",
        f"oci-archive:{archive}",
        "--output",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 2
    assert_one_error(result.stderr, "not a readable OCI archive")
    assert list(out.iterdir()) == []


def test_output_directory_not_writable(tmp_path: Path) -> None:
    readonly = tmp_path / "ro"
    readonly.mkdir()
    # Root ignores file modes, so make the directory truly read-only: a read-only tmpfs.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)], check=True)
    try:
        result = run_cli(
            "iso", "--flavor", "debian", "--output", str(readonly), "--cache-dir", str(tmp_path / "cache")
        )
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
    assert result.returncode == 2
    assert_one_error(result.stderr, f"output directory {readonly} is not writable")


def test_missing_host_tool_names_its_package(tmp_path: Path) -> None:
    iso = tmp_path / "x.iso"
    iso.write_bytes(b"\0" * 4096)
    env = {"PATH": str(tmp_path), "KAIROS_BUILD_ACCEL": "tcg"}
    result = subprocess.run(
        [sys.executable, "-m", "kairos_build", "boot", str(iso)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 4
    assert_one_error(result.stderr, "qemu-system-x86_64", "package qemu-system-x86")


def test_missing_tool_stops_the_build_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PATH": str(tmp_path)}  # none of the host tools is reachable
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kairos_build",
            "iso",
            "--output",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 4
    assert_one_error(result.stderr, "missing host tool", "(package ")
    assert not out.exists() and not (tmp_path / "cache").exists()
