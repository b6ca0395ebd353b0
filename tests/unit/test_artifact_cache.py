"""The artifact cache: an unchanged rebuild keeps the output; any input or a write changes it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kairos_build.config.buildconfig import config_of
from kairos_build.core.cache import Cache
from kairos_build.exporters.base import ExportContext
from kairos_build.pipelines.build import export_artifact
from kairos_build.publish import artifact_cache


class _CountingExporter:
    name = "fake"
    extension = "img"
    boot_mode = "secureboot"
    tools: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.runs = 0

    def export(self, context: ExportContext, output: Path) -> None:
        self.runs += 1
        output.write_bytes(b"artifact of " + context.rootfs_key.encode())


def _context(
    tmp_path: Path, rootfs_key: str = "k1", settings: dict[str, object] | None = None
) -> ExportContext:
    config = config_of(
        {"flavor": "debian", "cache-dir": tmp_path / "cache", "output": tmp_path / "out", **(settings or {})}
    )
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return ExportContext(config, tmp_path / "rootfs", rootfs_key, Cache(config.cache_dir), work)


def test_an_unchanged_rebuild_keeps_the_output_and_a_deleted_one_is_copied_back(tmp_path: Path) -> None:
    exporter, out = _CountingExporter(), tmp_path / "out"
    out.mkdir()
    first, _key = export_artifact(exporter, _context(tmp_path), out)
    again, _key = export_artifact(exporter, _context(tmp_path), out)
    assert exporter.runs == 1 and again == first
    first.path.unlink()
    copied, _key = export_artifact(exporter, _context(tmp_path), out)
    assert exporter.runs == 1 and copied.sha256 == first.sha256
    assert copied.path.read_bytes() == b"artifact of k1"


def test_other_inputs_build_anew(tmp_path: Path) -> None:
    exporter, out = _CountingExporter(), tmp_path / "out"
    out.mkdir()
    export_artifact(exporter, _context(tmp_path), out)
    export_artifact(exporter, _context(tmp_path, "k2"), out)
    export_artifact(exporter, _context(tmp_path, "k2", {"compression": "xz"}), out)
    assert exporter.runs == 3


def test_a_write_into_the_output_invalidates_the_entry(tmp_path: Path) -> None:
    exporter, out = _CountingExporter(), tmp_path / "out"
    out.mkdir()
    first, _key = export_artifact(exporter, _context(tmp_path), out)
    with first.path.open("r+b") as handle:  # what QEMU does to a raw disk it boots
        handle.write(b"ARTIFACT")
    os.utime(first.path, ns=(1, first.path.stat().st_mtime_ns + 1))
    rebuilt, _key = export_artifact(exporter, _context(tmp_path), out)
    assert exporter.runs == 2 and rebuilt.path.read_bytes() == b"artifact of k1"


def test_the_key_names_the_compression_spec(tmp_path: Path) -> None:
    exporter = _CountingExporter()
    keys = {
        artifact_cache.artifact_key(exporter, _context(tmp_path, settings={"compression": spec}))
        for spec in ("zstd", "zstd:19", "xz")
    }
    assert len(keys) == 3


def test_no_cache_builds_the_artifact_anew(tmp_path: Path) -> None:
    exporter, out = _CountingExporter(), tmp_path / "out"
    out.mkdir()
    export_artifact(exporter, _context(tmp_path), out)
    export_artifact(exporter, _context(tmp_path, settings={"no-cache": True}), out)
    (out / f"{_context(tmp_path).config.artifact_name}.img").unlink()
    export_artifact(exporter, _context(tmp_path, settings={"no-cache": True}), out)
    assert exporter.runs == 3


def test_a_plugins_own_code_is_in_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgraded plugin must not reuse what its older version built; our own exporters are
    covered by the digest of kairos-build's sources."""
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = tmp_path / "kb_keyed_plugin.py"
    digest = artifact_cache._plugin_digest.__wrapped__
    plugin.write_text("VERSION = 1\n")
    first = digest("kb_keyed_plugin")
    plugin.write_text("VERSION = 2\n")
    assert first is not None and digest("kb_keyed_plugin") not in (None, first)
    assert digest("kairos_build.exporters.iso") is None
