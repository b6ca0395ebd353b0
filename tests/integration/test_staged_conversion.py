"""The conversion as a chain of cached stages, for real on Debian trixie with apt and dracut:
an edit re-runs only the stages it reaches (the log says which and why), the booted ISO
carries a framework edit (that boot, as a CD under SeaBIOS, is also the suite's proof of the
plain ISO under SeaBIOS: tests/boot/live_iso.py), a new package is the only download and
leaves the initramfs as it was, a build SIGKILLed in any stage leaves a cache the next build
completes from, two builds share the package cache, and the staged result equals a
conversion from nothing, file for file.

The framework files are edited in a copy of the data folders (KAIROS_BUILD_DATA), never in
the checkout. The module's cache goes at the end.
"""

from __future__ import annotations

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
from tests.boot.live_iso import boot_plain_iso
from tests.conftest import read_until, run_cli

REPO = Path(__file__).resolve().parents[2]
MODULE = "overlays/common/usr/lib/dracut/modules.d/90kairos-immutable/module-setup.sh"
REPORT = "overlays/common/usr/lib/kairos/boot-report"
STAGES = ("packages", "initramfs", "framework")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="conversion needs root")


@dataclass
class Staged:
    data: Path  # the editable copy of flavors/, overlays/, templates/
    cache: Path
    base: str  # the --base of every build
    work: Path

    def env(self, data: Path | None = None) -> dict[str, str]:
        return {"KAIROS_BUILD_DATA": str(data or self.data)}

    def args(self, *extra: str) -> list[str]:
        return ["--base", self.base, "--cache-dir", str(self.cache), *extra]

    def iso(self, name: str) -> tuple[Path, str]:
        """`kairos-build iso` into work/NAME: the ISO and what the build logged."""
        out = self.work / name
        result = run_cli("iso", *self.args("--output", str(out)), env=self.env())
        assert result.returncode == 0, result.stderr[-3000:]
        return next(out.glob("*.iso")), result.stderr

    def debs(self) -> dict[str, int]:
        """The shared package cache's .deb files and their inode numbers."""
        return {p.name: p.stat().st_ino for p in (self.cache / "pkgcache").glob("*/*.deb")}

    def converted(self) -> Path:
        """The newest converted rootfs of the cache."""
        entries = [p for p in (self.cache / "converted").iterdir() if not p.name.startswith(".")]
        return max(entries, key=lambda p: p.stat().st_mtime)


def ran(log: str) -> set[str]:
    """The stages a build's log says ran."""
    return {stage for stage in STAGES if f"  {stage} runs: " in log}


def why(log: str, stage: str) -> str:
    return next(line for line in log.splitlines() if f"  {stage} runs: " in line)


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


@pytest.fixture(scope="module")
def staged(trixie_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    work = tmp_path_factory.mktemp("staged")
    data = work / "data"
    for name in ("flavors", "overlays", "templates"):
        shutil.copytree(REPO / name, data / name, symlinks=True)
    base = work / "base"  # a dir: base of our own: the session's cached one stays untouched
    subprocess.run(["cp", "-a", f"{trixie_base}/.", str(base)], check=True)
    yield Staged(data, work / "cache", f"dir:{base}", work)
    shutil.rmtree(work)


def test_a_cold_build_runs_every_stage_and_keeps_the_downloads(staged: Staged) -> None:
    _iso, log = staged.iso("cold")
    assert ran(log) == set(STAGES), log
    assert "packages runs: nothing cached for this base yet" in log
    debs = staged.debs()
    assert len(debs) > 100, sorted(debs)  # trixie's kernel, systemd, grub, cloud-init...
    # The downloads never reach the image: its own archive folder holds no package.
    assert not list((staged.converted() / "var/cache/apt/archives").glob("*.deb"))
    assert not (staged.converted() / "tmp/kairos-packages").exists()
    listed = run_cli("cache", "ls", "--cache-dir", str(staged.cache), "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"pkgcache"' in listed.stdout and '"packages"' in listed.stdout
    assert '"initramfs"' in listed.stdout


def test_a_dracut_module_edit_reruns_the_initramfs_and_the_framework(staged: Staged) -> None:
    before = staged.converted()
    module = staged.data / MODULE
    module.write_text(
        module.read_text().replace(
            "install() {\n", 'install() {\n    echo staged > "$initdir/etc/kairos-staged-test"\n', 1
        )
    )
    _iso, log = staged.iso("dracut")
    assert ran(log) == {"initramfs", "framework"}, log
    assert "initramfs_files changed" in why(log, "initramfs")
    assert "reusing cached packages" in log
    after = staged.converted()
    assert b"etc/kairos-staged-test" in initramfs_archive(after / "boot/initrd")
    assert b"etc/kairos-staged-test" not in initramfs_archive(before / "boot/initrd")


def initramfs_archive(initrd: Path) -> bytes:
    """The main (zstd-compressed) cpio archive of a dracut initramfs, decompressed; an
    uncompressed early-microcode archive may come first."""
    data = initrd.resolve().read_bytes()
    start = data.find(b"\x28\xb5\x2f\xfd")  # zstd's frame magic
    assert start >= 0, f"{initrd}: no zstd archive"
    return subprocess.run(["zstd", "-dcq"], input=data[start:], capture_output=True, check=True).stdout


@pytest.mark.boot
def test_a_framework_edit_reruns_only_the_framework_and_the_booted_iso_has_it(staged: Staged) -> None:
    report = staged.data / REPORT
    text = report.read_text()
    assert 'line="KAIROS-BOOT-REPORT flavor=' in text
    report.write_text(
        text.replace(
            'line="KAIROS-BOOT-REPORT flavor=', 'line="KAIROS-BOOT-REPORT staged=framework-edit flavor=', 1
        )
    )
    start = time.monotonic()
    iso, log = staged.iso("framework")
    seconds = time.monotonic() - start
    assert ran(log) == {"framework"}, log
    assert "framework_files changed" in why(log, "framework")
    assert "reusing cached packages" in log and "reusing cached initramfs" in log
    print(f"framework edit -> new ISO: {seconds:.1f} s")
    # This boot is also the suite's boot of a plain ISO as a CD under SeaBIOS, with every
    # check test_boot_iso makes of that ISO under Secure Boot (tests/boot/live_iso.py).
    fields = boot_plain_iso(iso, "bios")
    assert fields.get("staged") == "framework-edit", fields
    iso.unlink()


def test_one_more_package_downloads_only_what_it_adds(staged: Staged) -> None:
    before_debs = staged.debs()
    before = staged.converted()
    flavor = staged.data / "flavors/debian.yaml"
    assert "system: [login," in flavor.read_text()
    flavor.write_text(flavor.read_text().replace("system: [login,", "system: [htop, login,"))
    _iso, log = staged.iso("package")
    assert ran(log) == set(STAGES), log
    assert "packages changed" in why(log, "packages")
    # htop is nothing dracut reads: the initramfs of the earlier build is taken as it is.
    assert "taking the initramfs of " in log and "building the initramfs" not in log, log
    after_debs = staged.debs()
    new = set(after_debs) - set(before_debs)
    installed = installed_packages(staged.converted()) - installed_packages(before)
    assert "htop" in installed
    assert {name.split("_")[0] for name in new} == installed, (new, installed)
    # What was cached stayed as it was: the same files, not downloaded again.
    assert all(after_debs[name] == inode for name, inode in before_debs.items())


def installed_packages(tree: Path) -> set[str]:
    status = (tree / "var/lib/dpkg/status").read_text()
    return {line.split(": ", 1)[1] for line in status.splitlines() if line.startswith("Package: ")}


def test_the_staged_rootfs_equals_a_conversion_from_nothing(staged: Staged) -> None:
    """After a dracut edit, a framework edit and a new package, the rootfs made of cached
    stages of different builds (its initramfs taken from an earlier one) is the one a
    --no-cache conversion in an empty cache makes."""
    staged_tree = staged.converted()
    scratch = staged.work / "scratch-cache"
    target = staged.work / "from-nothing"
    result = run_cli(
        "convert",
        staged.base,
        "--no-cache",
        "--cache-dir",
        str(scratch),
        "--output",
        f"dir:{target}",
        env=staged.env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran(result.stderr) == set(STAGES)
    assert describe(staged_tree) == describe(target)
    shutil.rmtree(target)
    shutil.rmtree(scratch)


def describe(tree: Path) -> list[tuple[str, ...]]:
    """Every entry's path, type and mode, owner, size (files), date, content or link target."""
    listing = subprocess.run(
        ["find", ".", "-printf", r"%p\t%y\t%m\t%U:%G\t%s\t%T@\t%l\n"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in sorted(listing.splitlines()):
        path, kind, *rest = line.split("\t")
        if path == ".":  # the folder itself: a cache entry's date is its last use
            continue
        if kind == "d":  # a folder's size is its blocks: ext4 grows them, never shrinks them
            rest[2] = ""
        digest = ""
        if kind == "f":
            digest = subprocess.run(
                ["sha256sum", path], cwd=tree, capture_output=True, text=True, check=True
            ).stdout.split()[0]
        rows.append((path, kind, *rest, digest))
    return rows


@pytest.mark.parametrize("stage", STAGES)
def test_a_build_killed_in_a_stage_leaves_a_cache_the_next_build_completes(
    staged: Staged, stage: str
) -> None:
    """SIGKILL while `stage` runs (after an edit that makes it run): no entry of it appears,
    the stages before it stay, and the next build finishes from there."""
    marker = f"# killed in {stage}\n"
    if stage == "packages":  # a package set never built before: the stage starts from scratch
        flavor = staged.data / "flavors/debian.yaml"
        flavor.write_text(flavor.read_text().replace("system: [htop,", "system: [htop, less,"))
    elif stage == "initramfs":
        append(staged.data / MODULE, marker)
    else:
        append(staged.data / "overlays/common/etc/cloud/cloud.cfg.d/05-kairos.cfg", marker)
    kinds = {"packages": "packages", "initramfs": "initramfs", "framework": "converted"}
    entries = {kind: set(os.listdir(staged.cache / kind)) for kind in kinds.values()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kairos_build",
            "convert",
            staged.base,
            "--cache-dir",
            str(staged.cache),
            "--output",
            f"dir:{staged.work / 'killed'}",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **staged.env()},
        start_new_session=True,
    )
    seen = read_until(proc, f"{stage} runs: ")
    seen += read_until(proc, "‣", limit=60)  # the stage's first step has started
    if stage != "framework":  # well inside apt or dracut; the framework takes a second
        time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert f"{stage} runs: " in seen, seen
    assert not (staged.work / "killed").exists()
    after = {
        kind: {n for n in os.listdir(staged.cache / kind) if not n.startswith(".")} for kind in kinds.values()
    }
    assert after[kinds[stage]] == {n for n in entries[kinds[stage]] if not n.startswith(".")}
    deadline = time.monotonic() + 30  # the sandbox dies with the build
    while any(name.startswith(".tmp-") for name in os.listdir(staged.cache / kinds[stage])):
        Cache(staged.cache).prune_partial()
        if time.monotonic() > deadline:
            pytest.fail(f"the killed {stage} stage's partial entry stays")
        time.sleep(1)

    result = run_cli(
        "convert",
        staged.base,
        "--cache-dir",
        str(staged.cache),
        "--output",
        f"dir:{staged.work / 'after-kill'}",
        env=staged.env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = set(STAGES[STAGES.index(stage) :])
    assert ran(result.stderr) == expected, result.stderr
    assert (staged.work / "after-kill/etc/kairos-release").is_file()
    shutil.rmtree(staged.work / "after-kill")


def test_two_builds_at_once_share_the_package_cache(staged: Staged) -> None:
    """Two conversions with different package sets start together on one cache: they take
    turns on the package cache, both finish, and every cached package is whole."""
    copies = []
    for extra in ("file", "bc"):
        copy = staged.work / f"data-{extra}"
        shutil.copytree(staged.data, copy, symlinks=True)
        flavor = copy / "flavors/debian.yaml"
        flavor.write_text(flavor.read_text().replace("system: [htop,", f"system: [{extra}, htop,"))
        copies.append(copy)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kairos_build",
                "convert",
                staged.base,
                "--cache-dir",
                str(staged.cache),
                "--output",
                f"dir:{staged.work / f'twin-{n}'}",
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **staged.env(data)},
        )
        for n, data in enumerate(copies)
    ]
    logs = [proc.communicate(timeout=1800)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [log[-2000:] for log in logs]
    assert all("packages runs: " in log for log in logs), logs
    for n in range(2):
        assert (staged.work / f"twin-{n}/etc/kairos-release").is_file()
        shutil.rmtree(staged.work / f"twin-{n}")
    for deb in (staged.cache / "pkgcache").glob("*/*.deb"):
        check = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, check=False)
        assert check.returncode == 0, deb
    names = {deb.name.split("_")[0] for deb in (staged.cache / "pkgcache").glob("*/*.deb")}
    assert {"file", "bc"} <= names
