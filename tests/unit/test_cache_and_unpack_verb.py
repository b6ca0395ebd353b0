"""`kairos-build cache ls|prune` and `kairos-build unpack` on a small OCI layout."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from kairos_build.core.cache import Cache
from kairos_build.publish.files import copy_tree
from tests.conftest import run_cli
from tests.unit.ocihelp import Layout, dir_, layer_tar, reg, sym


def small_layout(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    layout = Layout()
    layout.add(
        layout.image(
            layer_tar(dir_("etc"), reg("etc/os-release", b"ID=debian\n"), sym("etc/alias", "os-release"))
        ),
        tag="v1",
    )
    return layout.write_dir(tmp_path / "layout")


def test_unpack_verb_copies_the_tree_and_caches_it(tmp_path: Path) -> None:
    layout, cache = small_layout(tmp_path), tmp_path / "cache"
    result = run_cli("unpack", f"oci:{layout}:v1", str(tmp_path / "out"), "--cache-dir", str(cache), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["key"].startswith("sha256-")
    assert (tmp_path / "out/etc/os-release").read_bytes() == b"ID=debian\n"
    assert os.readlink(tmp_path / "out/etc/alias") == "os-release"
    assert [e.kind for e in Cache(cache).entries()] == ["rootfs"]
    # A second unpack is a cache hit; a non-empty target is refused.
    again = run_cli("unpack", f"oci:{layout}:v1", str(tmp_path / "out2"), "--cache-dir", str(cache))
    assert again.returncode == 0 and "reusing cached rootfs" in again.stderr
    refused = run_cli("unpack", f"oci:{layout}:v1", str(tmp_path / "out"), "--cache-dir", str(cache))
    assert refused.returncode == 2 and "not an empty directory" in refused.stderr


def test_cache_ls_and_prune(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    old = cache.get_or_make("rootfs", "old", lambda t: (t / "f").write_bytes(b"x" * 2048))
    cache.get_or_make("squashfs", "new", lambda t: (t / "g").write_bytes(b"y"))
    blob = tmp_path / "blobs/sha256" / ("a" * 64)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"blob")
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))

    listing = run_cli("cache", "ls", "--cache-dir", str(tmp_path), "--json")
    entries = {(e["kind"], e["key"]): e for e in json.loads(listing.stdout)["entries"]}
    assert set(entries) == {("rootfs", "old"), ("squashfs", "new"), ("blobs", "a" * 64)}
    assert entries[("rootfs", "old")]["size"] == 2048

    pruned = run_cli("cache", "prune", "--cache-dir", str(tmp_path), "--older-than", "7", "--json")
    assert json.loads(pruned.stdout)["removed"] == [{"kind": "rootfs", "key": "old"}]
    assert not old.exists() and blob.exists()
    run_cli("cache", "prune", "--cache-dir", str(tmp_path), "--all")
    assert Cache(tmp_path).entries() == []


def _layer_blob(layout: Path) -> Path:
    index = json.loads((layout / "index.json").read_text())
    manifest_hex = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads((layout / "blobs/sha256" / manifest_hex).read_text())
    layer_hex: str = manifest["layers"][0]["digest"].removeprefix("sha256:")
    return layout / "blobs/sha256" / layer_hex


def _corrupt_flip(layout: Path) -> str:
    blob = _layer_blob(layout)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    return "corrupt"


def _corrupt_truncate(layout: Path) -> str:
    blob = _layer_blob(layout)
    blob.write_bytes(blob.read_bytes()[:20])
    return "corrupt"


def _corrupt_missing(layout: Path) -> str:
    _layer_blob(layout).unlink()
    return "cannot read blobs/sha256"


def _corrupt_not_json(layout: Path) -> str:
    (layout / "index.json").write_bytes(b"\x00not json")
    return "not valid JSON"


def test_corrupt_images_fail_cleanly_and_leave_the_cache_unchanged(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for number, corrupt in enumerate((_corrupt_flip, _corrupt_truncate, _corrupt_missing, _corrupt_not_json)):
        layout = small_layout(tmp_path / str(number))
        expected = corrupt(layout)
        result = run_cli(
            "unpack", f"oci:{layout}:v1", str(tmp_path / f"out{number}"), "--cache-dir", str(cache)
        )
        assert result.returncode == 2, (corrupt.__name__, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / f"out{number}").exists()
        assert Cache(cache).entries() == []
        assert not [p for p in cache.rglob(".tmp-*")]


def test_a_tree_is_copied_into_a_folder_that_does_not_exist_yet(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "etc").mkdir(parents=True)
    (source / "etc/os-release").write_text("ID=debian\n")
    target = tmp_path / "not/yet/there"
    copy_tree(source, target)
    assert (target / "etc/os-release").read_text() == "ID=debian\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["there"]  # no partial left
