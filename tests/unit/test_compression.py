"""--compression: parsed once into a frozen value; bad values are refused with a hint."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kairos_build.cli.app import app
from kairos_build.config.buildconfig import config_of
from kairos_build.core.errors import InputError
from kairos_build.disk.squashfs import DEFAULT_ZSTD_LEVEL, Compression


@pytest.mark.parametrize(
    ("spec", "args"),
    [
        ("zstd", ["-comp", "zstd", "-Xcompression-level", str(DEFAULT_ZSTD_LEVEL)]),
        ("zstd:1", ["-comp", "zstd", "-Xcompression-level", "1"]),
        ("ZSTD:22", ["-comp", "zstd", "-Xcompression-level", "22"]),
        ("xz", ["-comp", "xz", "-Xbcj", "x86"]),
        ("gzip", ["-comp", "gzip", "-Xcompression-level", "9"]),
        ("gzip:6", ["-comp", "gzip", "-Xcompression-level", "6"]),
        ("lz4", ["-comp", "lz4"]),
        ("lzo", ["-comp", "lzo"]),
    ],
)
def test_specs_become_mksquashfs_arguments(spec: str, args: list[str]) -> None:
    assert Compression.parse(spec).mksquashfs_args() == args


def test_xz_takes_the_bcj_filter_of_the_arch() -> None:
    assert Compression.parse("xz", arch="arm64").mksquashfs_args()[-1] == "arm"
    with pytest.raises(InputError, match="BCJ"):
        Compression.parse("xz", arch="riscv64")


@pytest.mark.parametrize(
    "spec", ["rar", "zstd:0", "zstd:23", "zstd:", "zstd:fast", "gzip:10", "lz4:3", "xz:9", "", "zstd:3:4"]
)
def test_bad_specs_are_refused_with_a_hint(spec: str) -> None:
    with pytest.raises(InputError) as caught:
        Compression.parse(spec)
    assert caught.value.hint


def test_the_spec_names_everything_that_changes_the_image() -> None:
    specs = {Compression.parse(s).spec for s in ["zstd", "zstd:19", "xz", "gzip", "gzip:6", "lz4"]}
    assert len(specs) == 6
    assert Compression.parse("zstd").spec == f"zstd:{DEFAULT_ZSTD_LEVEL}"
    assert Compression.parse("xz").spec == "xz+x86"
    assert Compression.parse(Compression.parse("gzip:6").spec) == Compression.parse("gzip:6")


def test_config_parses_the_string_once(tmp_path: Path) -> None:
    config = config_of({"flavor": "debian", "cache-dir": tmp_path, "compression": "zstd:19"})
    assert config.squashfs_compression == Compression("zstd", 19)
    assert config_of({"flavor": "debian", "cache-dir": tmp_path}).squashfs_compression == Compression()


@pytest.mark.parametrize("option", ["--compression", "--squashfs-compression"])
def test_cli_refuses_a_bad_compression_before_any_work(tmp_path: Path, option: str) -> None:
    result = CliRunner().invoke(
        app, ["iso", option, "zstd:99", "--cache-dir", str(tmp_path), "--output", str(tmp_path / "out")]
    )
    assert isinstance(result.exception, InputError)
    assert result.exception.hint == "zstd levels go from 1 to 22"
