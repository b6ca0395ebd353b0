"""`kairos-build cache ls|prune` and `kairos-build unpack` on a small OCI layout."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from kairos_build.cache import Cache
from tests.conftest import run_cli
from tests.unit.ocihelp import Layout, dir_, layer_tar, reg, sym


def small_layout(tmp_path: Path) -> Path:
    layout = Layout()
    layout.add(layout.image(layer_tar(dir_("etc"), reg("etc/os-release", b"ID=debian\n"),
                                      sym("etc/alias", "os-release"))), tag="v1")
    return layout.write_dir(tmp_path / "layout")


def test_unpack_verb_copies_the_tree_and_caches_it(tmp_path: Path) -> None:
    layout, cache = small_layout(tmp_path), tmp_path / "cache"
    result = run_cli("unpack", f"oci:{layout}:v1", str(tmp_path / "out"), "--cache-dir", str(cache),
                     "--json")
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
