"""Flags, a config file and `--set` are three spellings of one setting: the same build from each
gives the same artifact, byte for byte. A bad config file stops the real command line with exit
2 and one message naming the file and the line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import drop_finished_artifacts, run_cli

pytestmark = pytest.mark.integration

BASE = "bootstrap:debian/trixie"
# Non-default settings that change the ISO but not the conversion (a new --version would
# convert the rootfs anew, minutes on two cores): the squashfs, a boot entry's command line and
# /config.yaml, a list and a path among them.
COMPRESSION = "zstd:5"
KERNEL_ARGS = ("quiet", "rd.debug")
CLOUD_CONFIG = "#cloud-config\nhostname: kairos-config-layers\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_iso(test_cache: Path, out: Path, *args: str) -> Path:
    """One real ISO build into `out`, really exported: finished artifacts cached by an earlier
    build are dropped first (the conversion and the squashfs are still reused)."""
    drop_finished_artifacts(test_cache)
    result = run_cli(*args, "--output", str(out), "--cache-dir", str(test_cache))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "exporting iso" in result.stderr, result.stderr[-3000:]
    assert "reusing the cached artifact" not in result.stderr, result.stderr[-3000:]
    isos = list(out.glob("*.iso"))
    assert len(isos) == 1, list(out.iterdir())
    return isos[0]


def test_flags_config_file_and_set_give_the_same_iso(test_cache: Path, tmp_path: Path) -> None:
    cloud_config = tmp_path / "cloud-config.yaml"
    cloud_config.write_text(CLOUD_CONFIG)
    from_flags = build_iso(
        test_cache,
        tmp_path / "flags",
        "iso",
        "--flavor",
        "debian",
        "--base",
        BASE,
        "--compression",
        COMPRESSION,
        *(f"--kernel-arg={a}" for a in KERNEL_ARGS),
        "--cloud-config",
        str(cloud_config),
    )

    # The cloud-config path is relative: a config file's paths are relative to the file.
    config = tmp_path / "kairos-build.yaml"
    config.write_text(
        f"flavor: debian\nbase: {BASE}\ncompression: {COMPRESSION}\n"
        f"kernel-arg: [{', '.join(KERNEL_ARGS)}]\ncloud-config: cloud-config.yaml\n"
    )
    from_file = build_iso(test_cache, tmp_path / "file", "--config", str(config), "iso")

    from_sets = build_iso(
        test_cache,
        tmp_path / "sets",
        "--set",
        "flavor=debian",
        "--set",
        f"base={BASE}",
        "--set",
        f"compression={COMPRESSION}",
        *(f"--set=kernel-arg={a}" for a in KERNEL_ARGS),
        "--set",
        f"cloud-config={cloud_config}",
        "iso",
    )

    assert from_flags.name == from_file.name == from_sets.name
    digests = {sha256(iso) for iso in (from_flags, from_file, from_sets)}
    assert len(digests) == 1, digests
    assert from_flags.read_bytes() == from_file.read_bytes() == from_sets.read_bytes()
    # The published checksums say so too.
    for iso in (from_flags, from_file, from_sets):
        assert iso.with_name(f"{iso.name}.sha256").read_text().split()[0] in digests


@pytest.mark.parametrize(
    ("text", "line", "needles"),
    [
        ("flavor: debian\nrelase: trixie\n", 2, ["unknown setting 'relase'", "did you mean release?"]),
        ("flavor: debian\nkernel-arg: [quiet\n", 3, ["not valid YAML"]),
        ("compression: brotli\n", 1, ["'brotli' is not known"]),
    ],
)
def test_a_bad_config_file_stops_the_command_line(
    tmp_path: Path, text: str, line: int, needles: list[str]
) -> None:
    config = tmp_path / "kairos-build.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    result = run_cli(
        "--config", str(config), "iso", "--output", str(out), "--cache-dir", str(tmp_path / "cache")
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [shown for shown in result.stderr.splitlines() if shown.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: {config}:{line}: "), result.stderr
    assert all(needle in result.stderr for needle in needles), result.stderr
    assert not out.exists(), "a refused configuration made nothing"
