#!/usr/bin/env python3
"""Benchmark kairos-build's artifact builds on one rootfs; a table of ratios against targets.

    python3 benchmarks/build_bench.py [--rootfs TREE] [--base TREE] [--quick] [--json OUT]

Needs root and the host tools of an ISO/raw/qcow2 build, plus xorriso. TREE for --rootfs is a
converted rootfs (`kairos-build convert ... --output dir:TREE`; default: made from
bootstrap:debian/trixie through the test cache), for --base an unconverted one (default: a
`cp -a` of the test cache's bootstrapped trixie). Measured, in one run (see README.md here):

1. iso-vs-tools: `kairos-build iso` from the converted tree with no cached squashfs or
   artifact, vs. mksquashfs + grub-mkimage + mkfs.vfat/mtools + `xorriso -as mkisofs` doing
   the same work on the same tree. Interleaved `--runs` times; ratio of the medians <= 1.10.
2. warm-vs-cold: the same `iso` command twice from the unconverted base with an empty
   cache: the first converts (cold), the second has nothing to do (warm). <= 0.02.
3. multi-vs-separate: `build --format iso,raw,qcow2` vs. three separate builds, every one
   with its own empty cache. <= 0.5. (--quick: from the converted tree, no conversion.)
4. peak-rss: ru_maxrss of kairos-build's own process (RUSAGE_SELF: not mksquashfs & co.) for
   the tree and the tree grown 2x and 4x with --overlay-rootfs. <= 256 MiB and flat.
5. iso-size: our ISO vs. Kairos's published Debian ISO (627 MB).
6. edit, dracut, addpkg: from one cold build (`iso --base bootstrap:debian/trixie`, empty
   cache: bootstrap, conversion, ISO; the reference, as in 7), the same `iso` again after a
   framework file edit (only the framework stage runs; <= 5 s and <= 0.1 x cold), a dracut
   module edit (initramfs + framework; <= 0.35 x cold), one more package in the flavor (all
   three stages, warm package downloads; <= 0.5 x cold). The edits go to a scratch copy of
   flavors/, overlays/, templates/ (KAIROS_BUILD_DATA).
7. coldtools: `iso --base bootstrap:debian/trixie` from an empty cache vs. mmdebstrap with the
   flavor's packages, our overlay and one dracut, + line 1's tools on that tree. <= 1.10.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kairos_build.core.flavors import load_flavor  # noqa: E402
from kairos_build.core.rootfs import regular_file  # noqa: E402
from kairos_build.disk.grub import GRUB_LIB, early_config, grub_modules  # noqa: E402
from kairos_build.disk.squashfs import Compression  # noqa: E402

TEST_CACHE = Path(os.environ.get("KAIROS_BUILD_TEST_CACHE", Path.home() / ".cache/kairos-build-tests"))
KAIROS_DEBIAN_ISO_MB = 627  # kairos-debian-*-standard ISO as published by the Kairos project
MiB = 1 << 20
ALL_LINES = "iso,warm,multi,memory,edit,dracut,addpkg,coldtools"
# Runs the CLI in this process and prints its own peak RSS (children not counted) at exit.
RSS_WRAPPER = """
import resource, sys
sys.argv = ["kairos-build", *sys.argv[1:]]
from kairos_build.cli.app import main
try:
    main()
finally:
    print(f"PEAK_RSS_KIB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"""


@dataclass
class Row:
    name: str
    ours: str
    reference: str
    ratio: float | None
    target: str
    passed: bool | None
    note: str = ""


# --- Running things ---------------------------------------------------------------------------


def kb_env(data: Path | None = None) -> dict[str, str]:
    """The environment of a kairos-build run: this checkout's code first (PYTHONPATH), and
    with `data` the flavors/, overlays/ and templates/ of that folder (KAIROS_BUILD_DATA)."""
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    if data is not None:
        env["KAIROS_BUILD_DATA"] = str(data)
    return env


def run_kb(
    args: list[str], wrapper: str | None = None, data: Path | None = None
) -> tuple[float, dict[str, Any], str]:
    """`python -m kairos_build ARGS --json` from the checkout: seconds, its JSON, its stderr."""
    head = [sys.executable, "-c", wrapper] if wrapper else [sys.executable, "-m", "kairos_build"]
    start = time.monotonic()
    result = subprocess.run(
        [*head, *args, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=kb_env(data),
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"kairos-build {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return elapsed, json.loads(result.stdout), result.stderr


def build_args(verb: str, base: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return [verb, "--base", f"dir:{base}", "--cache-dir", str(cache), "--output", str(out), *extra]


def timed(command: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(
        command, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.monotonic() - start


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def iso_in(out: Path) -> Path:
    return next(out.glob("*.iso"))


def boot_files(tree: Path) -> tuple[Path, Path]:
    """The kernel and initrd of a tree: a converted one's /boot/vmlinuz and /boot/initrd links,
    else (a bare Debian tree) the newest /boot/vmlinuz-* and /boot/initrd.img-*."""
    found = []
    for link, pattern in (("vmlinuz", "vmlinuz-*"), ("initrd", "initrd.img-*")):
        path = regular_file(tree, f"boot/{link}") or max((tree / "boot").glob(pattern), default=None)
        if path is None:
            raise RuntimeError(f"{tree} has no /boot/{link} nor /boot/{pattern}")
        found.append(path)
    return found[0], found[1]


# --- Inputs -----------------------------------------------------------------------------------


def converted_tree(given: Path | None, scratch: Path) -> Path:
    if given is not None:
        return given
    tree = scratch / "rootfs"
    print(f"making the converted trixie tree {tree} (kairos-build convert, test cache)", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kairos_build",
            "convert",
            "bootstrap:debian/trixie",
            "--output",
            f"dir:{tree}",
            "--cache-dir",
            str(TEST_CACHE),
        ],
        cwd=REPO,
        check=True,
        env=kb_env(),
        stdin=subprocess.DEVNULL,
    )
    return tree


def unconverted_tree(given: Path | None, scratch: Path) -> Path:
    if given is not None:
        return given
    target = scratch / "base"
    for candidate in sorted((TEST_CACHE / "rootfs").glob("*")):
        release = candidate / "etc/os-release"
        if (
            release.is_file()
            and "trixie" in release.read_text()
            and not (candidate / "etc/kairos-release").exists()
        ):
            # cp -a, never a Python copy: the tree has device nodes. The entry stays untouched.
            subprocess.run(["cp", "-a", str(candidate), str(target)], check=True)
            return target
    subprocess.run(["mmdebstrap", "--variant=minbase", "trixie", str(target)], check=True)
    return target


# --- 1. ISO vs the bare tools -------------------------------------------------------------------


def bare_tools_iso(rootfs: Path, work: Path, compression: Compression) -> tuple[float, float]:
    """What `kairos-build iso` does, with the tools alone: squashfs, GRUB BIOS and EFI images,
    an ESP, then xorriso with a BIOS and an EFI El Torito entry, hybrid MBR + GPT (like
    grub-mkrescue), then `sha256sum` (kairos-build publishes NAME.sha256 too). Returns the
    seconds of the whole and of the checksum alone."""
    fresh(work)
    early = work / "early.cfg"
    early.write_text(early_config("COS_LIVE"))
    cfg = work / "grub.cfg"
    cfg.write_text(
        "set timeout=3\nmenuentry Kairos {\n linux /boot/kernel root=live:CDLABEL=COS_LIVE"
        " rd.live.image\n initrd /boot/initrd\n}\n"
    )
    kernel, initrd = boot_files(rootfs)
    modules = {p: grub_modules(GRUB_LIB / p, p) for p in ("i386-pc", "x86_64-efi")}
    start = time.monotonic()
    squashfs = work / "rootfs.squashfs"
    timed(
        [
            "mksquashfs",
            str(rootfs),
            str(squashfs),
            "-noappend",
            "-no-progress",
            "-quiet",
            *compression.mksquashfs_args(),
            "-wildcards",
            "-e",
            "proc/*",
            "sys/*",
            "dev/*",
            "run/*",
            "tmp/*",
        ]
    )
    for platform, fmt, output in (
        ("i386-pc", "i386-pc-eltorito", "bios.img"),
        ("x86_64-efi", "x86_64-efi", "BOOTX64.EFI"),
    ):
        timed(
            [
                "grub-mkimage",
                "-d",
                str(GRUB_LIB / platform),
                "-O",
                fmt,
                "-o",
                str(work / output),
                "-p",
                "/boot/grub",
                "-c",
                str(early),
                *modules[platform],
            ]
        )
    esp = work / "uefi.img"
    timed(["mkfs.vfat", "-C", "-n", "COS_GRUB", str(esp), "4096"])
    timed(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"])
    timed(["mcopy", "-i", str(esp), str(work / "BOOTX64.EFI"), str(cfg), "::/EFI/BOOT/"])
    timed(
        [
            "xorriso",
            "-as",
            "mkisofs",
            "-o",
            str(work / "tools.iso"),
            "-V",
            "COS_LIVE",
            "-iso-level",
            "3",
            "-R",
            "-J",
            "-joliet-long",
            "-graft-points",
            "--grub2-mbr",
            str(GRUB_LIB / "i386-pc/boot_hybrid.img"),
            "-b",
            "/boot/grub/bios.img",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "--grub2-boot-info",
            "-c",
            "/boot/boot.cat",
            "-eltorito-alt-boot",
            "-e",
            "/boot/uefi.img",
            "-no-emul-boot",
            "-isohybrid-gpt-basdat",
            f"/boot/kernel={kernel}",
            f"/boot/initrd={initrd}",
            f"/rootfs.squashfs={squashfs}",
            f"/boot/grub/grub.cfg={cfg}",
            f"/boot/grub/bios.img={work / 'bios.img'}",
            f"/boot/uefi.img={esp}",
        ]
    )
    checksum = timed(["sha256sum", str(work / "tools.iso")])
    return time.monotonic() - start, checksum


def iso_vs_tools(rootfs: Path, scratch: Path, runs: int, results: dict[str, Any]) -> list[Row]:
    cache, out = scratch / "cache-iso", scratch / "out-iso"
    fresh(cache)
    first, _, _ = run_kb(build_args("iso", rootfs, cache, fresh(out)))
    results["iso_first_build_empty_cache_s"] = first
    compression = Compression()
    ours, tools, checksums = [], [], []
    for index in range(runs):
        pair = []
        for side in ("ours", "tools") if index % 2 == 0 else ("tools", "ours"):
            if side == "ours":
                # Cold: the converted rootfs stays cached, the squashfs and artifact do not.
                for kind in ("squashfs", "artifact"):
                    shutil.rmtree(cache / kind, ignore_errors=True)
                seconds, _, _ = run_kb(build_args("iso", rootfs, cache, fresh(out)))
                ours.append(seconds)
            else:
                seconds, checksum = bare_tools_iso(rootfs, scratch / "tools", compression)
                tools.append(seconds)
                checksums.append(checksum)
            pair.append(f"{side} {seconds:.1f} s")
        print(f"  iso-vs-tools run {index + 1}: {', '.join(pair)}", flush=True)
    iso = iso_in(out)
    results.update(
        iso_ours_s=ours,
        iso_tools_s=tools,
        iso_bytes=iso.stat().st_size,
        iso_tools_bytes=(scratch / "tools/tools.iso").stat().st_size,
    )
    results["iso_tools_sha256sum_s"] = checksums
    ratio = statistics.median(ours) / statistics.median(tools)
    bare = [t - c for t, c in zip(tools, checksums, strict=True)]
    without = statistics.median(ours) / statistics.median(bare)
    shutil.rmtree(scratch / "tools")
    return [
        Row(
            "iso-vs-tools (cold squashfs)",
            f"{statistics.median(ours):.1f} s",
            f"{statistics.median(tools):.1f} s",
            ratio,
            "<= 1.10",
            ratio <= 1.10,
            f"runs ours {_list(ours)}, tools {_list(tools)} (of which sha256sum "
            f"{_list(checksums)}); vs. tools without sha256sum {without:.3f}",
        )
    ]


# --- 2. Warm vs cold ---------------------------------------------------------------------------


def warm_breakdown(args: list[str], results: dict[str, Any]) -> tuple[float, str]:
    """Three warm runs (median), and where the time of one goes."""
    warm_runs = []
    timings: dict[str, float] = {}
    for _ in range(3):
        seconds, answer, _ = run_kb(args)
        warm_runs.append(seconds)
        timings = answer["timings"]
    python = statistics.median(timed([sys.executable, "-c", "pass"]) for _ in range(3))
    imports = (
        statistics.median(timed([sys.executable, "-c", "import kairos_build.cli.app"]) for _ in range(3))
        - python
    )
    warm = statistics.median(warm_runs)
    steps = {k: v for k, v in timings.items() if not k.startswith("exporting")}
    rest = warm - python - imports - sum(steps.values()) - timings.get("exporting iso", 0.0)
    parts = {
        "python start": python,
        "imports": imports,
        **steps,
        "exporting iso": timings.get("exporting iso", 0.0),
        "other (keys, checks)": rest,
    }
    results["warm_runs_s"], results["warm_breakdown_s"] = warm_runs, parts
    return warm, ", ".join(f"{k} {v:.2f}" for k, v in parts.items())


def warm_vs_cold(base: Path | None, rootfs: Path, scratch: Path, results: dict[str, Any]) -> list[Row]:
    cache, out = scratch / "cache-cold", scratch / "out-cold"
    if base is None:  # --quick: the warm run only, on the converted tree
        args = build_args("iso", rootfs, scratch / "cache-iso", scratch / "out-iso")
        warm, parts = warm_breakdown(args, results)
        return [Row("warm rebuild (quick: no cold)", f"{warm:.2f} s", "-", None, "<= 0.02", None, parts)]
    args = build_args("iso", base, fresh(cache), fresh(out))
    cold, _, _ = run_kb(args)
    print(f"  cold iso from the unconverted base: {cold:.1f} s", flush=True)
    warm, parts = warm_breakdown(args, results)
    results.update(cold_s=cold, warm_s=warm)
    shutil.rmtree(cache)
    shutil.rmtree(out)
    ratio = warm / cold
    return [
        Row("warm/cold rebuild", f"{warm:.2f} s", f"{cold:.1f} s", ratio, "<= 0.02", ratio <= 0.02, parts)
    ]


# --- 3. One multi-format build vs separate ones -----------------------------------------------


def multi_vs_separate(base: Path, converted: bool, scratch: Path, results: dict[str, Any]) -> list[Row]:
    out = scratch / "out-multi"
    multi, _, _ = run_kb(
        build_args("build", base, fresh(scratch / "cache-multi"), fresh(out), "--format", "iso,raw,qcow2")
    )
    shutil.rmtree(scratch / "cache-multi")
    separate = {}
    for fmt in ("iso", "raw", "qcow2"):
        separate[fmt], _, _ = run_kb(build_args(fmt, base, fresh(scratch / f"cache-{fmt}"), fresh(out)))
        shutil.rmtree(scratch / f"cache-{fmt}")
        print(f"  separate {fmt}: {separate[fmt]:.1f} s", flush=True)
    shutil.rmtree(out)
    total = sum(separate.values())
    results.update(multi_s=multi, separate_s=separate)
    ratio = multi / total
    where = "from the converted tree (no conversion)" if converted else "from the unconverted base"
    return [
        Row(
            "multi/separate (iso,raw,qcow2)",
            f"{multi:.1f} s",
            f"{total:.1f} s",
            ratio,
            "<= 0.5",
            ratio <= 0.5,
            f"{where}; separate {_list(list(separate.values()))}",
        )
    ]


# --- 4. Peak memory of our own process ---------------------------------------------------------


def grow_overlay(folder: Path, size: int) -> None:
    """`size` bytes of incompressible files (64 MiB each) to make the rootfs larger."""
    fresh(folder)
    chunk = MiB * 4
    for index in range(-(-size // (64 * MiB))):
        with (folder / f"ballast-{index:03}.bin").open("wb") as handle:
            for _ in range(16):
                handle.write(os.urandom(chunk))


def tree_size(root: Path) -> int:
    out = subprocess.run(["du", "-sb", str(root)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def peak_memory(rootfs: Path, scratch: Path, formats: str, results: dict[str, Any]) -> list[Row]:
    size = tree_size(rootfs)
    peaks = {}
    for scale in (1, 2, 4):
        extra: list[str] = []
        if scale > 1:
            grow_overlay(scratch / "ballast", (scale - 1) * size)
            extra = ["--overlay-rootfs", str(scratch / "ballast")]
        args = build_args(
            "build",
            rootfs,
            fresh(scratch / "cache-rss"),
            fresh(scratch / "out-rss"),
            "--format",
            formats,
            *extra,
        )
        seconds, _, stderr = run_kb(args, wrapper=RSS_WRAPPER)
        found = re.search(r"PEAK_RSS_KIB=(\d+)", stderr)
        peaks[scale] = int(found.group(1)) / 1024 if found else float("nan")
        print(
            f"  peak RSS at {scale}x rootfs ({formats}): {peaks[scale]:.0f} MiB ({seconds:.0f} s)", flush=True
        )
        shutil.rmtree(scratch / "cache-rss")
        shutil.rmtree(scratch / "out-rss")
    shutil.rmtree(scratch / "ballast", ignore_errors=True)
    results["peak_rss_mib"] = peaks
    growth = peaks[4] / peaks[1]
    return [
        Row(
            f"peak RSS, own process ({formats})",
            f"{max(peaks.values()):.0f} MiB",
            "256 MiB",
            max(peaks.values()) / 256,
            "<= 256 MiB",
            max(peaks.values()) <= 256,
            "1x/2x/4x rootfs: " + "/".join(f"{v:.0f}" for v in peaks.values()) + " MiB",
        ),
        Row(
            "peak RSS growth 4x/1x rootfs",
            f"{growth:.2f}",
            "1.00",
            growth,
            "flat (<= 1.10)",
            growth <= 1.10,
            f"rootfs {size / MiB:.0f} MiB -> ~{4 * size / MiB:.0f} MiB",
        ),
    ]


# --- 5. ISO size ---------------------------------------------------------------------------------


def package_count(rootfs: Path) -> int:
    status = (rootfs / "var/lib/dpkg/status").read_text(errors="replace")
    return status.count("Status: install ok installed")


def package_set(rootfs: Path) -> str:
    return f"{package_count(rootfs)} Debian packages installed (minbase + the debian flavor's list)"


def iso_size(rootfs: Path, results: dict[str, Any]) -> list[Row]:
    ours = results["iso_bytes"] / 1e6
    ratio = ours / KAIROS_DEBIAN_ISO_MB
    return [
        Row(
            "ISO size vs Kairos debian ISO",
            f"{ours:.0f} MB",
            f"{KAIROS_DEBIAN_ISO_MB} MB",
            ratio,
            "<= 1.00",
            ratio <= 1.0,
            package_set(rootfs),
        )
    ]


# --- 6. Rebuilds after an edit: framework file, dracut module, one more package -------------------


CLOUD_CFG = "overlays/common/etc/cloud/cloud.cfg.d/05-kairos.cfg"
DRACUT_MODULE = "overlays/common/usr/lib/dracut/modules.d/90kairos-immutable/module-setup.sh"
NEW_PACKAGE = "htop"  # small, not in minbase nor in the debian flavor
CONVERSION_STAGES = ("packages", "initramfs", "framework")


@dataclass
class Edit:
    """One edit of the scratch data folder and what the next `iso` must then do."""

    only: str  # its --only name
    name: str
    change: Callable[[Path], str]  # edits the data folder, says what it did
    must_run: tuple[str, ...]
    factor: float  # the target: at most this times the cold build
    limit_s: float | None = None  # and, if set, at most this many seconds


def scratch_data(folder: Path) -> Path:
    """A copy of the checkout's flavors/, overlays/ and templates/ to edit (never the repo's)."""
    for name in ("flavors", "overlays", "templates"):
        shutil.copytree(REPO / name, folder / name, symlinks=True)
    return folder


def append_comment(data: Path, relative: str) -> str:
    path = data / relative
    text = path.read_text()
    path.write_text(f"{text}{'' if text.endswith(chr(10)) else chr(10)}# build_bench: edited\n")
    return f"a comment line appended to {relative}"


def add_package(data: Path, package: str = NEW_PACKAGE) -> str:
    flavor = data / "flavors/debian.yaml"
    text, count = re.subn(r"^(\s*system:\s*\[)", rf"\g<1>{package}, ", flavor.read_text(), flags=re.MULTILINE)
    if count != 1:
        raise RuntimeError(f"{flavor}: expected one 'system: [' line, found {count}")
    flavor.write_text(text)
    return f"{package} added to the system: packages of flavors/debian.yaml"


EDITS = (
    Edit(
        "edit",
        "framework edit -> ISO",
        functools.partial(append_comment, relative=CLOUD_CFG),
        ("framework",),
        0.10,
        5.0,
    ),
    Edit(
        "dracut",
        "dracut module edit -> ISO",
        functools.partial(append_comment, relative=DRACUT_MODULE),
        ("initramfs", "framework"),
        0.35,
    ),
    Edit("addpkg", "add one package -> ISO (warm package cache)", add_package, CONVERSION_STAGES, 0.50),
)


def stages_in_log(stderr: str) -> tuple[list[str], list[str]]:
    """The cache stages that ran (`NAME runs: why`) and the kinds reused (`reusing cached KIND`)."""
    ran = re.findall(r"^\s*(\S+) runs: ", stderr, flags=re.MULTILINE)
    reused = re.findall(r"^\s*reusing cached (\S+) ", stderr, flags=re.MULTILINE)
    return ran, reused


def debs(cache: Path) -> set[str]:
    return {p.name for p in (cache / "pkgcache").rglob("*.deb")}


def edit_target(edit: Edit) -> str:
    ratio = f"{edit.factor:.2f}"
    return f"<= {edit.limit_s:g} s & {ratio}" if edit.limit_s is not None else f"<= {ratio}"


def edit_row(edit: Edit, seconds: float, cold: float, ran: list[str], new_debs: list[str]) -> Row:
    """The row of one edit: its time against the cold build, and which conversion stages ran."""
    ratio = seconds / cold
    converted = [s for s in ran if s in CONVERSION_STAGES]
    stages_ok = sorted(converted) == sorted(edit.must_run)
    within = ratio <= edit.factor and (edit.limit_s is None or seconds <= edit.limit_s)
    expected = "as expected" if stages_ok else f"EXPECTED {', '.join(edit.must_run)}"
    note = (
        f"conversion stages run: {', '.join(converted) or 'none'} ({expected}); "
        f"all that ran: {', '.join(ran) or 'nothing'}"
    )
    if edit.only == "addpkg":
        note += f"; pkgcache gained {len(new_debs)} .deb: {', '.join(new_debs) or 'none'}"
    return Row(
        edit.name, f"{seconds:.2f} s", f"{cold:.1f} s", ratio, edit_target(edit), within and stages_ok, note
    )


def cold_args(cache: Path, out: Path) -> list[str]:
    """The cold build of the issue: bootstrap, convert, ISO, from an empty cache."""
    return [
        "iso",
        "--flavor",
        "debian",
        "--base",
        "bootstrap:debian/trixie",
        "--cache-dir",
        str(cache),
        "--output",
        str(out),
    ]


def run_edit(
    edit: Edit, paths: tuple[Path, Path, Path], cold: float, unbootstrapped: float, results: dict[str, Any]
) -> Row:
    data, cache, out = paths
    what = edit.change(data)
    before = debs(cache)
    seconds, answer, stderr = run_kb(cold_args(cache, fresh(out)), data=data)
    ran, reused = stages_in_log(stderr)
    new_debs = sorted(debs(cache) - before)
    print(f"  {edit.name}: {seconds:.2f} s ({what}; ran {', '.join(ran) or 'nothing'})", flush=True)
    results[f"{edit.only}_s"] = seconds
    results[f"{edit.only}_detail"] = {
        "edit": what,
        "ran": ran,
        "reused": reused,
        "new_debs": new_debs,
        "timings": answer.get("timings", {}),
    }
    iso_in(out)  # the ISO is there
    row = edit_row(edit, seconds, cold, ran, new_debs)
    row.note += (
        f"; against the cold build without its bootstrap ({unbootstrapped:.1f} s): "
        f"{seconds / unbootstrapped:.3f}"
    )
    return row


def edits_vs_cold(scratch: Path, only: set[str], results: dict[str, Any]) -> list[Row]:
    """A cold `iso` (bootstrap, convert, ISO; empty cache), then each selected edit and the
    same `iso` again on the cache it left: the rebuild time against the cold one."""
    data = scratch_data(fresh(scratch / "data"))
    cache, out = fresh(scratch / "cache-edits"), scratch / "out-edits"
    try:
        cold, answer, stderr = run_kb(cold_args(cache, fresh(out)), data=data)
        timings = answer.get("timings", {})
        unbootstrapped = cold - timings.get("resolving the base", 0.0)
        print(
            f"  cold iso, bootstrap included (reference): {cold:.1f} s "
            f"({unbootstrapped:.1f} s without the bootstrap)",
            flush=True,
        )
        results["edits_cold_s"] = cold
        results["edits_cold_detail"] = {
            "ran": stages_in_log(stderr)[0],
            "debs": len(debs(cache)),
            "timings": timings,
        }
        return [
            run_edit(edit, (data, cache, out), cold, unbootstrapped, results)
            for edit in EDITS
            if edit.only in only
        ]
    finally:
        for folder in (data, cache, out):
            shutil.rmtree(folder, ignore_errors=True)


# --- 7. A cold build with its bootstrap vs the bare tools ---------------------------------------


# Left to the package hooks, dracut runs twice: the kernel's postinst hook, then dracut's
# trigger once dracut-live and dracut-network are set up. With INITRD=No (the debian flavor's
# quirk too) both skip it and this customize hook runs it once, with the overlay's configuration.
ONE_DRACUT = (
    'for k in "$1"/lib/modules/*; do v=${k##*/}; '
    'chroot "$1" dracut --force --kver "$v" /boot/initrd.img-"$v"; done'
)


def bootstrap_tree(tree: Path, packages: list[str], overlay: Path) -> float:
    """mmdebstrap minbase with `packages`, `overlay` copied in before any package, then one
    dracut per kernel (ONE_DRACUT); in its own mount and PID namespace, as kairos-build runs
    mmdebstrap. Returns the seconds."""
    command = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        f"--include={','.join(packages)}",
        f'--setup-hook=cp -a {shlex.quote(str(overlay))}/. "$1"/',
        f"--customize-hook={ONE_DRACUT}",
        "trixie",
        str(tree),
    ]
    start = time.monotonic()
    result = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "INITRD": "No"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
    return time.monotonic() - start


def cold_ours(scratch: Path) -> tuple[float, dict[str, Any]]:
    """`iso --flavor debian --base bootstrap:debian/trixie` with an empty cache."""
    cache, out = fresh(scratch / "cache-coldtools"), fresh(scratch / "out-coldtools")
    try:
        seconds, answer, stderr = run_kb(
            [
                "iso",
                "--flavor",
                "debian",
                "--base",
                "bootstrap:debian/trixie",
                "--cache-dir",
                str(cache),
                "--output",
                str(out),
            ]
        )
        detail = {
            "ran": stages_in_log(stderr)[0],
            "iso_bytes": iso_in(out).stat().st_size,
            "timings": answer.get("timings", {}),
        }
        return seconds, detail
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def cold_tools(scratch: Path, compression: Compression) -> tuple[float, dict[str, Any]]:
    """mmdebstrap (flavor packages, our overlay) then line 1's tools on that tree."""
    tree, work = scratch / "coldtools-tree", scratch / "coldtools-work"
    shutil.rmtree(tree, ignore_errors=True)
    try:
        debstrap = bootstrap_tree(
            tree, load_flavor("debian", REPO / "flavors").all_packages(), REPO / "overlays/common"
        )
        rest, checksum = bare_tools_iso(tree, work, compression)
        kernel, initrd = boot_files(tree)
        detail = {
            "mmdebstrap_s": debstrap,
            "iso_s": rest,
            "sha256sum_s": checksum,
            "kernel": kernel.name,
            "initrd": initrd.name,
            "iso_bytes": (work / "tools.iso").stat().st_size,
            "packages": package_count(tree),
        }
        return debstrap + rest, detail
    finally:
        shutil.rmtree(tree, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def cold_vs_tools(scratch: Path, runs: int, results: dict[str, Any]) -> list[Row]:
    """Both sides download everything: interleaved, ours first in the first round."""
    ours: list[float] = []
    tools: list[float] = []
    details: dict[str, list[dict[str, Any]]] = {"ours": [], "tools": []}
    compression = Compression()
    for index in range(runs):
        for side in ("ours", "tools") if index % 2 == 0 else ("tools", "ours"):
            if side == "ours":
                seconds, detail = cold_ours(scratch)
                ours.append(seconds)
            else:
                seconds, detail = cold_tools(scratch, compression)
                tools.append(seconds)
            details[side].append(detail)
            print(f"  coldtools run {index + 1}: {side} {seconds:.1f} s", flush=True)
    results.update(
        coldtools_ours_s=ours,
        coldtools_tools_s=tools,
        coldtools_ours_detail=details["ours"],
        coldtools_tools_detail=details["tools"],
    )
    return [cold_tools_row(ours, tools, details["tools"][-1])]


def cold_tools_row(ours: list[float], tools: list[float], last: dict[str, Any]) -> Row:
    ratio = statistics.median(ours) / statistics.median(tools)
    note = (
        f"ours: iso --base bootstrap:debian/trixie, empty cache, runs {_list(ours)}; tools: "
        f"mmdebstrap minbase + {last['packages']} packages with overlays/common copied in "
        f"and one dracut ({last['initrd']}) {last['mmdebstrap_s']:.1f} s, then "
        f"mksquashfs/grub-mkimage/ESP/xorriso/sha256sum {last['iso_s']:.1f} s; runs "
        f"{_list(tools)}"
    )
    return Row(
        "cold build vs bare tools",
        f"{statistics.median(ours):.1f} s",
        f"{statistics.median(tools):.1f} s",
        ratio,
        "<= 1.10",
        ratio <= 1.10,
        note,
    )


# --- Report ------------------------------------------------------------------------------------


def _list(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def print_table(rows: list[Row]) -> None:
    print(f"\n{'measurement':44} {'ours':>10} {'reference':>10} {'ratio':>6}  {'target':15} result")
    for row in rows:
        ratio = f"{row.ratio:.3f}" if row.ratio is not None else "-"
        result = {True: "PASS", False: "FAIL", None: "n/a"}[row.passed]
        print(f"{row.name:44} {row.ours:>10} {row.reference:>10} {ratio:>6}  {row.target:15} {result}")
    print()
    for row in rows:
        if row.note:
            print(f"{row.name}: {row.note}")


def measure_all(
    args: argparse.Namespace, only: set[str], scratch: Path, results: dict[str, Any]
) -> list[Row]:
    """The selected lines in order; the trees are made only when a selected line needs them."""
    rootfs = functools.cache(lambda: converted_tree(args.rootfs, scratch))
    base = functools.cache(lambda: None if args.quick else unconverted_tree(args.base, scratch))
    edits = [edit.only for edit in EDITS if edit.only in only]
    steps: list[tuple[str, Callable[[], list[Row]]]] = [
        (
            "iso",
            lambda: iso_vs_tools(rootfs(), scratch, args.runs or 2, results) + iso_size(rootfs(), results),
        ),
        ("warm", lambda: warm_vs_cold(base(), rootfs(), scratch, results)),
        ("multi", lambda: multi_vs_separate(base() or rootfs(), base() is None, scratch, results)),
        ("memory", lambda: peak_memory(rootfs(), scratch, args.memory_formats, results)),
        (",".join(edits), lambda: edits_vs_cold(scratch, only, results)),
        ("coldtools", lambda: cold_vs_tools(scratch, args.runs or 1, results)),
    ]
    rows: list[Row] = []
    for name, measure in steps:
        if name and set(name.split(",")) <= only:
            if args.quick and name not in ("iso", "warm", "multi", "memory"):
                print(f"skipping {name}: cold builds, not with --quick", flush=True)
                continue
            print(f"measuring {name}...", flush=True)
            rows += measure()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rootfs", type=Path, help="a converted rootfs tree")
    parser.add_argument("--base", type=Path, help="an unconverted rootfs tree (cold builds)")
    parser.add_argument("--quick", action="store_true", help="skip the cold conversions")
    parser.add_argument("--json", type=Path, default=Path("build-bench.json"), help="results file")
    parser.add_argument(
        "--runs", type=int, help="rounds of iso-vs-tools (default 2) and of coldtools (default 1)"
    )
    parser.add_argument("--memory-formats", default="iso", help="formats of the peak-RSS builds")
    parser.add_argument("--only", default=ALL_LINES, help=f"comma-separated subset of {ALL_LINES}")
    parser.add_argument("--scratch", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: conversion chroots and tools set owners")
    only = set(args.only.split(","))
    if unknown := only - set(ALL_LINES.split(",")):
        sys.exit(f"--only: unknown {', '.join(sorted(unknown))} (choose from {ALL_LINES})")
    scratch = Path(tempfile.mkdtemp(prefix="kb-build-bench-", dir=args.scratch))
    results: dict[str, Any] = {}
    rows: list[Row] = []
    try:
        rows = measure_all(args, only, scratch, results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(rows)
    args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "results": results}, indent=2))
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
