#!/usr/bin/env python3
"""Squashfs compression choices on a real converted rootfs: build time, size, read-back time.

    python3 benchmarks/compression_bench.py --rootfs TREE [--runs 2] [--json OUT]

For each compression spec (the values of `--compression`) it runs the same mksquashfs
command kairos-build runs (kairos_build.disk.squashfs.make_squashfs), then reads everything
back with `unsquashfs -d /dev/shm/...` (decompression into memory: a proxy for what the live
system pays when it reads its files at boot). `--runs` rounds are interleaved (every spec once
per round) so that the noise of a shared machine hits every spec alike; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kairos_build.disk.squashfs import Compression, make_squashfs  # noqa: E402

SPECS = ("zstd:1", "zstd:3", "zstd:9", "zstd:15", "zstd:19", "xz", "gzip", "gzip:6", "lz4")


def timed(action: list[str] | None = None) -> float:
    start = time.monotonic()
    if action is not None:
        subprocess.run(action, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def measure_spec(rootfs: Path, spec: str, scratch: Path) -> dict[str, float]:
    image = scratch / "rootfs.squashfs"
    start = time.monotonic()
    make_squashfs(rootfs, image, Compression.parse(spec, arch="amd64"))
    build = time.monotonic() - start
    size = image.stat().st_size
    readback_dir = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="kb-readback-"))
    try:
        read = timed(["unsquashfs", "-no-progress", "-f", "-d", str(readback_dir / "x"), str(image)])
    finally:
        shutil.rmtree(readback_dir)
        image.unlink()
    return {"build_s": build, "size_bytes": size, "read_s": read}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rootfs", type=Path, required=True, help="a converted rootfs tree")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--specs", default=",".join(SPECS))
    args = parser.parse_args()
    specs = args.specs.split(",")
    samples: dict[str, list[dict[str, float]]] = {s: [] for s in specs}
    with tempfile.TemporaryDirectory(prefix="kb-compression-") as scratch:
        for round_ in range(args.runs):
            for spec in specs:
                result = measure_spec(args.rootfs, spec, Path(scratch))
                samples[spec].append(result)
                print(
                    f"round {round_ + 1} {spec:8} {result['build_s']:6.1f} s "
                    f"{result['size_bytes'] / 2**20:6.1f} MiB read {result['read_s']:5.2f} s",
                    flush=True,
                )
    rows = {
        spec: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for spec, runs in samples.items()
    }
    print(f"\n{'spec':8} {'mksquashfs':>10} {'size':>9} {'read-back':>9}")
    for spec, row in rows.items():
        print(f"{spec:8} {row['build_s']:8.1f} s {row['size_bytes'] / 2**20:5.1f} MiB {row['read_s']:7.2f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rootfs": str(args.rootfs), "runs": args.runs, "medians": rows, "samples": samples}, indent=2
            )
        )


if __name__ == "__main__":
    main()
