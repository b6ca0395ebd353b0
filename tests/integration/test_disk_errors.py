"""Bad disk options and a full output filesystem: one clear error, a non-zero exit, and
nothing left at the output path."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli


def build_raw(probe_tree: Path, test_cache: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "raw", "--base", f"dir:{probe_tree}", "--output", str(out), "--cache-dir", str(test_cache), *extra
    )


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not [p.name for p in out.iterdir() if p.name != "lost+found"]


def test_a_disk_size_too_small_is_refused_with_the_numbers(
    probe_tree: Path, test_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = build_raw(probe_tree, test_cache, out, "--disk-size", "2G")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: a 2.00 GiB disk is too small: the partitions need" in result.stderr
    assert "hint: give --disk-size" in result.stderr
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--partition-size", "state=lots", "the size of state 'lots' is not a size"),
        ("--partition-size", "state", "is not NAME=SIZE"),
        ("--partition-size", "root=1G", "there is no partition called 'root'"),
        ("--disk-size", "8 apples", "--disk-size '8 apples' is not a size"),
        ("--firmware", "coreboot", "--firmware 'coreboot' is not known"),
    ],
)
def test_options_that_do_not_parse_fail_before_any_work(
    probe_tree: Path, test_cache: Path, tmp_path: Path, option: str, value: str, message: str
) -> None:
    out = tmp_path / "out"
    result = build_raw(probe_tree, test_cache, out, option, value)
    assert result.returncode == 2
    assert message in result.stderr
    assert "resolving the base" not in result.stderr  # refused before any work
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("hostname: x\n", "does not start with '#cloud-config'"),
        ("#cloud-config\nusers: [\n", "is not valid YAML"),
        ("#cloud-config\n- a list\n", "is not a YAML mapping"),
    ],
)
def test_a_bad_cloud_config_is_refused(
    probe_tree: Path, test_cache: Path, tmp_path: Path, content: str, message: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(content)
    result = build_raw(probe_tree, test_cache, tmp_path / "out", "--cloud-config", str(config))
    assert result.returncode == 2 and message in result.stderr


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_output_filesystem_leaves_no_partial_disk(
    probe_tree: Path, test_cache: Path, small_tmpfs: Path
) -> None:
    result = build_raw(probe_tree, test_cache, small_tmpfs)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_written(small_tmpfs)
