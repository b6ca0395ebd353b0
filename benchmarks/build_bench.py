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
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kairos_build.disk.grub import GRUB_LIB, early_config, grub_modules  # noqa: E402
from kairos_build.disk.squashfs import Compression  # noqa: E402
from kairos_build.exporters.iso import boot_file  # noqa: E402

TEST_CACHE = Path(os.environ.get("KAIROS_BUILD_TEST_CACHE", Path.home() / ".cache/kairos-build-tests"))
KAIROS_DEBIAN_ISO_MB = 627  # kairos-debian-*-standard ISO as published by the Kairos project
MiB = 1 << 20
# Runs the CLI in this process and prints its own peak RSS (children not counted) at exit.
RSS_WRAPPER = """
import resource, sys
sys.argv = ["kairos-build", *sys.argv[1:]]
from kairos_build.cli import main
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


def run_kb(args: list[str], wrapper: str | None = None) -> tuple[float, dict[str, Any], str]:
    """`python -m kairos_build ARGS --json` from the checkout: seconds, its JSON, its stderr."""
    head = [sys.executable, "-c", wrapper] if wrapper else [sys.executable, "-m", "kairos_build"]
    start = time.monotonic()
    result = subprocess.run([*head, *args, "--json"], cwd=REPO, capture_output=True, text=True,
                            check=False)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"kairos-build {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return elapsed, json.loads(result.stdout), result.stderr


def build_args(verb: str, base: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return [verb, "--base", f"dir:{base}", "--cache-dir", str(cache), "--output", str(out), *extra]


def timed(command: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def iso_in(out: Path) -> Path:
    return next(out.glob("*.iso"))


# --- Inputs -----------------------------------------------------------------------------------


def converted_tree(given: Path | None, scratch: Path) -> Path:
    if given is not None:
        return given
    tree = scratch / "rootfs"
    print(f"making the converted trixie tree {tree} (kairos-build convert, test cache)", flush=True)
    subprocess.run([sys.executable, "-m", "kairos_build", "convert", "bootstrap:debian/trixie",
                    "--output", f"dir:{tree}", "--cache-dir", str(TEST_CACHE)], cwd=REPO, check=True)
    return tree


def unconverted_tree(given: Path | None, scratch: Path) -> Path:
    if given is not None:
        return given
    target = scratch / "base"
    for candidate in sorted((TEST_CACHE / "rootfs").glob("*")):
        release = candidate / "etc/os-release"
        if (release.is_file() and "trixie" in release.read_text()
                and not (candidate / "etc/kairos-release").exists()):
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
    cfg.write_text("set timeout=3\nmenuentry Kairos {\n linux /boot/kernel root=live:CDLABEL=COS_LIVE"
                   " rd.live.image\n initrd /boot/initrd\n}\n")
    kernel, initrd = boot_file(rootfs, "vmlinuz"), boot_file(rootfs, "initrd")
    modules = {p: grub_modules(GRUB_LIB / p, p) for p in ("i386-pc", "x86_64-efi")}
    start = time.monotonic()
    squashfs = work / "rootfs.squashfs"
    timed(["mksquashfs", str(rootfs), str(squashfs), "-noappend", "-no-progress", "-quiet",
           *compression.mksquashfs_args(), "-wildcards", "-e", "proc/*", "sys/*", "dev/*", "run/*",
           "tmp/*"])
    for platform, fmt, output in (("i386-pc", "i386-pc-eltorito", "bios.img"),
                                  ("x86_64-efi", "x86_64-efi", "BOOTX64.EFI")):
        timed(["grub-mkimage", "-d", str(GRUB_LIB / platform), "-O", fmt, "-o", str(work / output),
               "-p", "/boot/grub", "-c", str(early), *modules[platform]])
    esp = work / "uefi.img"
    timed(["mkfs.vfat", "-C", "-n", "COS_GRUB", str(esp), "4096"])
    timed(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"])
    timed(["mcopy", "-i", str(esp), str(work / "BOOTX64.EFI"), str(cfg), "::/EFI/BOOT/"])
    timed(["xorriso", "-as", "mkisofs", "-o", str(work / "tools.iso"), "-V", "COS_LIVE",
           "-iso-level", "3", "-R", "-J", "-joliet-long", "-graft-points",
           "--grub2-mbr", str(GRUB_LIB / "i386-pc/boot_hybrid.img"),
           "-b", "/boot/grub/bios.img", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
           "--grub2-boot-info", "-c", "/boot/boot.cat",
           "-eltorito-alt-boot", "-e", "/boot/uefi.img", "-no-emul-boot", "-isohybrid-gpt-basdat",
           f"/boot/kernel={kernel}", f"/boot/initrd={initrd}", f"/rootfs.squashfs={squashfs}",
           f"/boot/grub/grub.cfg={cfg}", f"/boot/grub/bios.img={work / 'bios.img'}",
           f"/boot/uefi.img={esp}"])
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
        for side in (("ours", "tools") if index % 2 == 0 else ("tools", "ours")):
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
    results.update(iso_ours_s=ours, iso_tools_s=tools, iso_bytes=iso.stat().st_size,
                   iso_tools_bytes=(scratch / "tools/tools.iso").stat().st_size)
    results["iso_tools_sha256sum_s"] = checksums
    ratio = statistics.median(ours) / statistics.median(tools)
    bare = [t - c for t, c in zip(tools, checksums, strict=True)]
    without = statistics.median(ours) / statistics.median(bare)
    shutil.rmtree(scratch / "tools")
    return [Row("iso-vs-tools (cold squashfs)", f"{statistics.median(ours):.1f} s",
                f"{statistics.median(tools):.1f} s", ratio, "<= 1.10", ratio <= 1.10,
                f"runs ours {_list(ours)}, tools {_list(tools)} (of which sha256sum "
                f"{_list(checksums)}); vs. tools without sha256sum {without:.3f}")]


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
    imports = statistics.median(timed([sys.executable, "-c", "import kairos_build.cli"])
                                for _ in range(3)) - python
    warm = statistics.median(warm_runs)
    steps = {k: v for k, v in timings.items() if not k.startswith("exporting")}
    rest = warm - python - imports - sum(steps.values()) - timings.get("exporting iso", 0.0)
    parts = {"python start": python, "imports": imports, **steps,
             "exporting iso": timings.get("exporting iso", 0.0), "other (keys, checks)": rest}
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
    return [Row("warm/cold rebuild", f"{warm:.2f} s", f"{cold:.1f} s", ratio, "<= 0.02",
                ratio <= 0.02, parts)]


# --- 3. One multi-format build vs separate ones -----------------------------------------------


def multi_vs_separate(base: Path, converted: bool, scratch: Path, results: dict[str, Any]) -> list[Row]:
    out = scratch / "out-multi"
    multi, _, _ = run_kb(build_args("build", base, fresh(scratch / "cache-multi"), fresh(out),
                                    "--format", "iso,raw,qcow2"))
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
    return [Row("multi/separate (iso,raw,qcow2)", f"{multi:.1f} s", f"{total:.1f} s", ratio,
                "<= 0.5", ratio <= 0.5, f"{where}; separate {_list(list(separate.values()))}")]


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
        args = build_args("build", rootfs, fresh(scratch / "cache-rss"), fresh(scratch / "out-rss"),
                          "--format", formats, *extra)
        seconds, _, stderr = run_kb(args, wrapper=RSS_WRAPPER)
        found = re.search(r"PEAK_RSS_KIB=(\d+)", stderr)
        peaks[scale] = int(found.group(1)) / 1024 if found else float("nan")
        print(f"  peak RSS at {scale}x rootfs ({formats}): {peaks[scale]:.0f} MiB ({seconds:.0f} s)",
              flush=True)
        shutil.rmtree(scratch / "cache-rss")
        shutil.rmtree(scratch / "out-rss")
    shutil.rmtree(scratch / "ballast", ignore_errors=True)
    results["peak_rss_mib"] = peaks
    growth = peaks[4] / peaks[1]
    return [Row(f"peak RSS, own process ({formats})", f"{max(peaks.values()):.0f} MiB", "256 MiB",
                max(peaks.values()) / 256, "<= 256 MiB", max(peaks.values()) <= 256,
                "1x/2x/4x rootfs: " + "/".join(f"{v:.0f}" for v in peaks.values()) + " MiB"),
            Row("peak RSS growth 4x/1x rootfs", f"{growth:.2f}", "1.00", growth, "flat (<= 1.10)",
                growth <= 1.10, f"rootfs {size / MiB:.0f} MiB -> ~{4 * size / MiB:.0f} MiB")]


# --- 5. ISO size ---------------------------------------------------------------------------------


def package_set(rootfs: Path) -> str:
    status = (rootfs / "var/lib/dpkg/status").read_text(errors="replace")
    installed = status.count("Status: install ok installed")
    return f"{installed} Debian packages installed (minbase + the debian flavor's list)"


def iso_size(rootfs: Path, results: dict[str, Any]) -> list[Row]:
    ours = results["iso_bytes"] / 1e6
    ratio = ours / KAIROS_DEBIAN_ISO_MB
    return [Row("ISO size vs Kairos debian ISO", f"{ours:.0f} MB", f"{KAIROS_DEBIAN_ISO_MB} MB", ratio,
                "<= 1.00", ratio <= 1.0, package_set(rootfs))]


# --- Report ------------------------------------------------------------------------------------


def _list(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def print_table(rows: list[Row]) -> None:
    print(f"\n{'measurement':38} {'ours':>10} {'reference':>10} {'ratio':>6}  {'target':15} result")
    for row in rows:
        ratio = f"{row.ratio:.3f}" if row.ratio is not None else "-"
        result = {True: "PASS", False: "FAIL", None: "n/a"}[row.passed]
        print(f"{row.name:38} {row.ours:>10} {row.reference:>10} {ratio:>6}  {row.target:15} {result}")
    print()
    for row in rows:
        if row.note:
            print(f"{row.name}: {row.note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rootfs", type=Path, help="a converted rootfs tree")
    parser.add_argument("--base", type=Path, help="an unconverted rootfs tree (cold builds)")
    parser.add_argument("--quick", action="store_true", help="skip the cold conversions")
    parser.add_argument("--json", type=Path, default=Path("build-bench.json"), help="results file")
    parser.add_argument("--runs", type=int, default=2, help="iso-vs-tools rounds")
    parser.add_argument("--memory-formats", default="iso", help="formats of the peak-RSS builds")
    parser.add_argument("--only", default="iso,warm,multi,memory",
                        help="comma-separated subset of iso,warm,multi,memory")
    parser.add_argument("--scratch", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: conversion chroots and tools set owners")
    only = set(args.only.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="kb-build-bench-", dir=args.scratch))
    results: dict[str, Any] = {}
    rows: list[Row] = []
    try:
        rootfs = converted_tree(args.rootfs, scratch)
        base = None if args.quick else unconverted_tree(args.base, scratch)
        steps = [("iso", lambda: (iso_vs_tools(rootfs, scratch, args.runs, results)
                                  + iso_size(rootfs, results))),
                 ("warm", lambda: warm_vs_cold(base, rootfs, scratch, results)),
                 ("multi", lambda: multi_vs_separate(base or rootfs, base is None, scratch, results)),
                 ("memory", lambda: peak_memory(rootfs, scratch, args.memory_formats, results))]
        for name, measure in steps:
            if name in only:
                print(f"measuring {name}...", flush=True)
                rows += measure()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(rows)
    args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "results": results},
                                    indent=2))
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
