"""The cache under real builds: two builds at once on one fresh cache, and builds killed
with SIGKILL in the middle of the squashfs or of the ext4 image, then run again.

Both build the ISO of the session's converted tree (given as dir:, so conversion is only a
copy) with one SOURCE_DATE_EPOCH. Builds are reproducible, so "correct" is checked byte for
byte: the artifact made after a kill equals a clean build's, and so do their cache entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kairos_build.core.cache import Cache
from tests.conftest import run_cli
from tests.imagefiles import file_digest

pytestmark = pytest.mark.integration

EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


STAGED = ("converted", "squashfs", "ext4")


def iso_command(tree: Path, cache: Path, out: Path, verb: str = "iso") -> list[str]:
    return [
        sys.executable,
        "-m",
        "kairos_build",
        verb,
        "--base",
        f"dir:{tree}",
        "--cache-dir",
        str(cache),
        "--output",
        str(out),
    ]


def sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def squashfs_entry(cache: Path) -> Path:
    return only([p / "rootfs.squashfs" for p in (cache / "squashfs").iterdir() if not p.name.startswith(".")])


def check_consistent(cache: Path) -> list[dict[str, object]]:
    """`cache ls` lists complete entries only, each with its recorded inputs; no leftovers."""
    listing = run_cli("cache", "ls", "--cache-dir", str(cache), "--json")
    assert listing.returncode == 0, listing.stderr
    entries: list[dict[str, object]] = json.loads(listing.stdout)["entries"]
    for entry in entries:
        assert Path(str(entry["path"])).exists(), entry
    staged = [e for e in entries if e["kind"] in STAGED]
    records = [r.key for kind in STAGED for r in Cache(cache).records(kind)]
    assert sorted(records) == sorted(str(e["key"]) for e in staged)
    assert sorted(p.stem for p in cache.glob("*/.inputs/*.json")) == sorted(records)
    assert not list(cache.glob("*/.tmp-*")) and not list(cache.glob("work/*"))
    return entries


@dataclass(frozen=True)
class CleanBuilds:
    cache: Path
    isos: list[Path]
    logs: list[str]
    seconds: float


@pytest.fixture(scope="module")
def clean_builds(probe_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CleanBuilds]:
    """Two ISO builds of the probe tree started at once on one fresh cache."""
    root = tmp_path_factory.mktemp("concurrent")
    cache, logs = root / "cache", [root / "a.log", root / "b.log"]
    started = time.monotonic()
    procs = []
    for name, log_path in zip("ab", logs, strict=True):
        with log_path.open("w") as log_file:
            procs.append(
                subprocess.Popen(
                    iso_command(probe_tree, cache, root / f"out-{name}"),
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                    text=True,
                    env={**os.environ, **EPOCH},
                )
            )
    codes = [proc.wait(timeout=3600) for proc in procs]
    texts = [p.read_text() for p in logs]
    assert codes == [0, 0], "\n---\n".join(t[-3000:] for t in texts)
    isos = [only(list((root / f"out-{name}").glob("*.iso"))) for name in "ab"]
    yield CleanBuilds(cache, isos, texts, time.monotonic() - started)
    shutil.rmtree(root, ignore_errors=True)


def test_two_builds_at_once_share_one_cache(clean_builds: CleanBuilds) -> None:
    made = [log for log in clean_builds.logs if "making the squashfs" in log]
    reused = [log for log in clean_builds.logs if "reusing cached squashfs" in log]
    assert len(made) == 1 and len(reused) == 1, clean_builds.logs
    assert "squashfs runs: nothing cached for this rootfs yet" in made[0]
    assert "squashfs runs:" not in reused[0]
    # The same goes for the conversion (of a converted tree: a refresh): one made it, the
    # other waited and reused it.
    assert sum("refresh runs:" in log for log in clean_builds.logs) == 1
    entries = check_consistent(clean_builds.cache)
    # One artifact entry: both builds made the same ISO (same key), the later one is kept.
    assert sorted(str(e["kind"]) for e in entries) == ["artifact", "converted", "squashfs"]
    squashfs = sha256(squashfs_entry(clean_builds.cache))
    assert [file_digest(iso, "/rootfs.squashfs") for iso in clean_builds.isos] == [squashfs] * 2
    a, b = (sha256(iso) for iso in clean_builds.isos)
    assert a == b


def test_sigkill_during_the_squashfs_leaves_a_usable_cache(
    probe_tree: Path, clean_builds: CleanBuilds, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    try:
        kill_during_stage(
            iso_command(probe_tree, cache, out), "making the squashfs", cache / "squashfs", "rootfs.squashfs"
        )
        assert [e.kind for e in Cache(cache).entries()] == ["converted"]

        again = subprocess.run(
            iso_command(probe_tree, cache, out),
            capture_output=True,
            text=True,
            timeout=3600,
            env={**os.environ, **EPOCH},
            check=False,
        )
        assert again.returncode == 0, again.stderr[-4000:]
        assert "reusing cached converted" in again.stderr
        assert "squashfs runs: nothing cached for this rootfs yet" in again.stderr
        check_consistent(cache)
        squashfs = sha256(squashfs_entry(cache))
        assert squashfs == sha256(squashfs_entry(clean_builds.cache))
        iso = only(list(out.glob("*.iso")))
        assert file_digest(iso, "/rootfs.squashfs") == squashfs
        assert sha256(iso) == sha256(clean_builds.isos[0])
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_sigkill_during_the_ext4_image_leaves_a_usable_cache(
    probe_tree: Path, clean_builds: CleanBuilds, tmp_path: Path
) -> None:
    """The raw disk made after the kill equals one from a clean build on a fresh cache."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    try:
        kill_during_stage(
            iso_command(probe_tree, cache, out, "raw"),
            "making the system image",
            cache / "ext4",
            "active.img",
        )
        assert sorted(e.kind for e in Cache(cache).entries()) == ["converted", "squashfs"]

        again = subprocess.run(
            iso_command(probe_tree, cache, out, "raw"),
            capture_output=True,
            text=True,
            timeout=3600,
            env={**os.environ, **EPOCH},
            check=False,
        )
        assert again.returncode == 0, again.stderr[-4000:]
        assert "reusing cached squashfs" in again.stderr
        assert "ext4 image runs: nothing cached for this rootfs yet" in again.stderr
        entries = check_consistent(cache)
        assert sorted(str(e["kind"]) for e in entries) == ["artifact", "converted", "ext4", "squashfs"]
        assert sha256(squashfs_entry(cache)) == sha256(squashfs_entry(clean_builds.cache))
        clean = run_cli(
            *iso_command(probe_tree, tmp_path / "fresh", tmp_path / "clean", "raw")[3:], env=EPOCH
        )
        assert clean.returncode == 0, clean.stderr[-4000:]
        digests = [
            only(list(folder.glob("*.raw.sha256"))).read_text().split()[0]
            for folder in (out, tmp_path / "clean")
        ]
        assert digests[0] == digests[1]
        assert sha256(only(list(out.glob("*.raw")))) == digests[0]
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def kill_during_stage(argv: list[str], started: str, kind_dir: Path, name: str) -> None:
    """Run the build until its log says `started` and the stage writes its `name` under
    `kind_dir`, SIGKILL its process group, and check what a kill may and may not leave."""
    cache, out = Path(argv[argv.index("--cache-dir") + 1]), Path(argv[argv.index("--output") + 1])
    proc = subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, **EPOCH},
    )
    seen = read_until(proc, started, deadline=time.monotonic() + 1200)
    partial = wait_for_partial(kind_dir, name)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, seen
    assert proc.stderr is not None
    proc.stderr.close()

    # Only the hidden half entry: nothing listed, no record, no artifact, no mount.
    assert partial.exists()
    assert [p.name for p in kind_dir.iterdir() if not p.name.startswith(".")] == []
    assert not list(kind_dir.glob(".inputs/*.json"))
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
    assert str(cache) not in Path("/proc/self/mountinfo").read_text()
    assert list(cache.glob("work/*")), "the killed build's scratch folder is left behind"
    for record in cache.glob("*/.inputs/*.json"):
        assert (record.parent.parent / record.stem).exists(), record


def read_until(proc: subprocess.Popen[str], words: str, deadline: float) -> str:
    """The build's log up to the first line with `words` (it must come before `deadline`)."""
    assert proc.stderr is not None
    seen = ""
    while words not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert words in seen, seen
    return seen


def wait_for_partial(kind_dir: Path, name: str) -> Path:
    """The half-made entry, once the stage's tool has started writing `name` into it."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = [p for p in kind_dir.glob(f".tmp-*/{name}") if p.stat().st_size > 0]
        if found:
            return found[0].parent
        time.sleep(0.05)
    raise AssertionError(f"nothing was written under {kind_dir} in 300 s")
