"""Stages keyed by their named inputs: the key, the record beside the entry, the log line
that says why a stage runs, --no-cache, and the cleanup of what killed builds leave."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kairos_build.core.cache import Cache, Stage, cache_key, describe_age, recordable
from kairos_build.core.log import log


@pytest.fixture
def messages() -> Iterator[list[str]]:
    """What the build log says at INFO, as plain strings."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler, level = Collect(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield seen
    log.removeHandler(handler)
    log.setLevel(level)


def squashfs_stage(rootfs: str = "r1", tool: str = "4.5.1", compression: str = "zstd") -> Stage:
    return Stage(
        "squashfs",
        "squashfs",
        {"rootfs": rootfs, "compression": compression, "mksquashfs": tool},
        lineage=("rootfs",),
        prefix="z-",
    )


def make_file(target: Path) -> None:
    (target / "rootfs.squashfs").write_text("bytes")


def runs_line(messages: list[str]) -> str:
    return next(m for m in reversed(messages) if " runs: " in m)


def test_stage_key_is_the_hash_of_its_named_inputs() -> None:
    stage = squashfs_stage()
    assert stage.key == "z-" + cache_key("squashfs", rootfs="r1", compression="zstd", mksquashfs="4.5.1")
    assert squashfs_stage(tool="4.6").key != stage.key
    # An unset optional input leaves the key as it was before the input existed.
    assert cache_key("converted", base="b", SOURCE_DATE_EPOCH=None) == cache_key("converted", base="b")
    assert cache_key("converted", base="b", SOURCE_DATE_EPOCH=1) != cache_key("converted", base="b")


def test_inputs_are_recorded_with_long_values_as_their_digest(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    stage = Stage(
        "conversion", "converted", {"flavor": "x" * 1000, "SOURCE_DATE_EPOCH": None, "version": "v1.0.0"}
    )
    entry = cache.get_or_make_stage(stage, lambda t: None)
    record = json.loads((tmp_path / "converted/.inputs" / f"{stage.key}.json").read_text())
    assert record["stage"] == "conversion" and record["key"] == entry.name == stage.key
    assert record["inputs"]["flavor"].startswith("sha256:")
    assert record["inputs"]["SOURCE_DATE_EPOCH"] is None
    assert record["inputs"]["version"] == "v1.0.0"
    # The record is no cache entry of its own.
    assert [e.key for e in cache.entries()] == [stage.key]


def test_first_run_says_nothing_is_cached_for_its_lineage(tmp_path: Path, messages: list[str]) -> None:
    Cache(tmp_path).get_or_make_stage(squashfs_stage(), make_file)
    assert runs_line(messages) == "  squashfs runs: nothing cached for this rootfs yet"


def test_a_changed_input_names_itself(tmp_path: Path, messages: list[str]) -> None:
    cache = Cache(tmp_path)
    first = cache.get_or_make_stage(squashfs_stage(), make_file)
    cache.get_or_make_stage(squashfs_stage(tool="4.6.1", compression="xz"), make_file)
    line = runs_line(messages)
    assert line.startswith(
        f"  squashfs runs: compression, mksquashfs changed since the cached one ({first.name[:12]}…, used "
    )
    assert line.endswith(" s ago)")
    # Another rootfs is another lineage: nothing to compare with.
    cache.get_or_make_stage(squashfs_stage(rootfs="r2"), make_file)
    assert runs_line(messages) == "  squashfs runs: nothing cached for this rootfs yet"


def test_compares_with_the_most_recently_used_entry(tmp_path: Path, messages: list[str]) -> None:
    cache = Cache(tmp_path)
    old = cache.get_or_make_stage(squashfs_stage(tool="1"), make_file)
    recent = cache.get_or_make_stage(squashfs_stage(compression="xz"), make_file)
    os.utime(old, (1, 1))
    cache.get_or_make_stage(squashfs_stage(tool="3", compression="xz"), make_file)
    assert f"mksquashfs changed since the cached one ({recent.name[:12]}…" in runs_line(messages)


def test_a_hit_reuses_and_no_cache_makes_it_anew(tmp_path: Path, messages: list[str]) -> None:
    cache, calls = Cache(tmp_path), []

    def make(target: Path) -> None:
        calls.append(1)
        (target / "rootfs.squashfs").write_text(f"version {len(calls)}")

    entry = cache.get_or_make_stage(squashfs_stage(), make)
    cache.get_or_make_stage(squashfs_stage(), make)
    assert len(calls) == 1 and messages[-1].startswith("  reusing cached squashfs z-")
    again = cache.get_or_make_stage(squashfs_stage(), make, refresh=True)
    assert runs_line(messages) == "  squashfs runs: --no-cache"
    assert again == entry and (entry / "rootfs.squashfs").read_text() == "version 2"
    assert [e.key for e in cache.entries()] == [entry.name]
    assert (tmp_path / "squashfs/.inputs" / f"{entry.name}.json").is_file()


def test_a_failed_stage_leaves_no_entry_and_no_record(tmp_path: Path) -> None:
    cache = Cache(tmp_path)

    def fail(target: Path) -> None:
        (target / "half").write_text("x")
        raise RuntimeError("mksquashfs died")

    with pytest.raises(RuntimeError):
        cache.get_or_make_stage(squashfs_stage(), fail)
    assert cache.entries() == [] and cache.records("squashfs") == []
    assert not list((tmp_path / "squashfs").iterdir())


def test_prune_partial_removes_what_killed_builds_left(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    kept = cache.get_or_make_stage(squashfs_stage(), make_file)
    dead = "999999999"
    leftovers = [
        tmp_path / "squashfs" / f".tmp-z-abc-{dead}",
        tmp_path / "work" / f"{dead}-scratch",
        tmp_path / "squashfs/.inputs" / f".z-abc.json.tmp-{dead}",
        tmp_path / "squashfs/.inputs/z-gone.json",
    ]  # its entry is missing
    for path in leftovers[:2]:
        path.mkdir(parents=True)
    for path in leftovers[2:]:
        path.write_text("{}")
    alive = tmp_path / "work" / f"{os.getpid()}-scratch"
    alive.mkdir()
    cache.prune_partial()
    assert [p for p in leftovers if p.exists()] == []
    assert alive.is_dir() and kept.is_dir()
    assert [r.key for r in cache.records("squashfs")] == [kept.name]


def test_workdir_is_named_after_the_process_and_removed(tmp_path: Path) -> None:
    with Cache(tmp_path).workdir() as work:
        assert work.parent == tmp_path / "work" and work.name.startswith(f"{os.getpid()}-")
    assert not work.exists()


def test_prune_removes_the_record_with_its_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.get_or_make_stage(squashfs_stage(), make_file)
    cache.prune(None)
    assert not entry.exists()
    assert not list((tmp_path / "squashfs/.inputs").iterdir())


def test_recordable_keeps_short_values_and_ages_read_naturally() -> None:
    assert recordable({"a": 1, "b": ["x"], "c": Path("/p")}) == {"a": 1, "b": ["x"], "c": "/p"}
    assert [describe_age(s) for s in (5, 600, 7200, 3 * 86400)] == ["5 s", "10 min", "2 h", "3 days"]


def test_source_date_epoch_is_a_named_input_of_the_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, messages: list[str]
) -> None:
    from kairos_build.config.buildconfig import config_of
    from kairos_build.convert.stages import packages_stage
    from kairos_build.source.resolve import Base

    config, base = config_of({"flavor": "debian", "release": "trixie"}), Base(tmp_path, "base-key", "a base")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    unset = packages_stage(config, base)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    given = packages_stage(config, base)
    assert unset.inputs["SOURCE_DATE_EPOCH"] is None and given.inputs["SOURCE_DATE_EPOCH"] == 1700000000
    assert unset.key != given.key
    cache = Cache(tmp_path / "cache")
    cache.get_or_make_stage(unset, lambda t: None)
    cache.get_or_make_stage(given, lambda t: None)
    assert runs_line(messages).startswith("  packages runs: SOURCE_DATE_EPOCH changed since")


@pytest.mark.parametrize("verb", ["build", "iso", "raw"])
def test_no_cache_reaches_the_build_config(verb: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from kairos_build.cli.app import app
    from kairos_build.config.buildconfig import BuildConfig
    from kairos_build.pipelines import build

    seen: list[BuildConfig] = []

    def record(config: BuildConfig, formats: list[str]) -> list[object]:
        seen.append(config)
        return []

    monkeypatch.setattr(build, "build", record)
    options = ["--format", "iso"] if verb == "build" else []
    for extra in (["--no-cache"], []):
        result = CliRunner().invoke(app, [verb, *options, *extra])
        assert result.exit_code == 0, result.output
    assert [c.no_cache for c in seen] == [True, False]


def test_half_written_artifacts_of_killed_builds_are_removed(tmp_path: Path) -> None:
    from kairos_build.publish.files import remove_stale_partials

    dead, mine = "999999999", str(os.getpid())
    stale = [
        tmp_path / f".kairos.iso.partial-{dead}",
        tmp_path / f".kairos.iso.sha256.partial-{dead}",
        tmp_path / f".kairos-netboot.old-{dead}",
    ]
    kept = [tmp_path / f".kairos.raw.partial-{mine}", tmp_path / "kairos.iso"]
    for path in [*stale, *kept]:
        path.write_text("x")
    (tmp_path / f".kairos-netboot.partial-{dead}").mkdir()
    stale.append(tmp_path / f".kairos-netboot.partial-{dead}")
    remove_stale_partials(tmp_path)
    assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)


def test_unpack_no_cache_unpacks_the_base_anew(tmp_path: Path) -> None:
    from tests.conftest import run_cli
    from tests.unit.test_cache_and_unpack_verb import small_layout

    layout, cache = small_layout(tmp_path / "src"), tmp_path / "cache"
    first = run_cli("unpack", f"oci:{layout}:v1", str(tmp_path / "a"), "--cache-dir", str(cache))
    again = run_cli(
        "unpack", f"oci:{layout}:v1", str(tmp_path / "b"), "--cache-dir", str(cache), "--no-cache"
    )
    assert first.returncode == 0 and again.returncode == 0, again.stderr
    assert "unpacking" in again.stderr and "reusing cached rootfs" not in again.stderr
    assert [e.kind for e in Cache(cache).entries()] == ["rootfs"]
    assert (tmp_path / "b/etc/os-release").read_bytes() == b"ID=debian\n"
