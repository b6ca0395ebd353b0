#!/usr/bin/env python3
"""Benchmark our OCI unpacker against umoci's on a real Debian rootfs.

    python3 benchmarks/unpack_bench.py [--rootfs DIR] [--layers N] [--runs 3]

Builds an OCI layout (gzip layers) from a real rootfs tree: DIR, else one the test suite left
in ~/.cache/kairos-build-tests/rootfs (KAIROS_BUILD_TEST_CACHE), else a fresh
`mmdebstrap --variant=minbase trixie`. The tree's files are split over N layers (every layer
declares all directories). Then, in one run:

- wall time and peak RSS of `umoci unpack` and of our `unpack_image` (each its own process,
  measured by /usr/bin/time, each into a fresh directory), `--runs` times, with the ratios;
- `resolve_base("oci:LAYOUT:TAG", ...)` twice through one Cache: a miss (unpacks), then a hit;
- our peak RSS for the image vs. an image twice as large (the tree twice, in two layers under
  different prefixes): memory must not grow with the size of the image.

Needs root (umoci and our unpacker set owners), umoci and GNU time (apt-get install
umoci time).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

REPO = Path(__file__).resolve().parent.parent
TAG = "bench"
OURS = (
    "import sys; from pathlib import Path; from kairos_build.source.oci import unpack_image; "
    "unpack_image(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))"
)


# --- Building the image ----------------------------------------------------------------------


def find_rootfs(given: Path | None, scratch: Path) -> Path:
    if given is not None:
        if not (given / "etc/os-release").is_file():
            sys.exit(f"{given} is not a rootfs (no etc/os-release)")
        return given
    cache = Path(os.environ.get("KAIROS_BUILD_TEST_CACHE", Path.home() / ".cache" / "kairos-build-tests"))
    for candidate in sorted((cache / "rootfs").glob("*")):
        if not candidate.name.startswith(".") and (candidate / "etc/os-release").is_file():
            return candidate
    target = scratch / "rootfs"
    print(f"no cached rootfs: mmdebstrap --variant=minbase trixie {target}", flush=True)
    subprocess.run(["mmdebstrap", "--variant=minbase", "trixie", str(target)], check=True)
    return target


class _Hashing:
    """A write-only stream that hashes what passes through on its way to `out`."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _add_layer(layout: Path, fill: Callable[[tarfile.TarFile], None]) -> tuple[dict[str, Any], str]:
    """A gzip layer streamed to its blob (never in memory); its descriptor and diff_id."""
    partial = layout / "blobs/sha256/partial"
    with partial.open("wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(fileobj=cast(IO[bytes], compressed), mode="wb", compresslevel=6, mtime=0) as gz:
            uncompressed = _Hashing(cast(IO[bytes], gz))
            with tarfile.open(
                fileobj=cast(IO[bytes], uncompressed), mode="w|", format=tarfile.PAX_FORMAT
            ) as tar:
                fill(tar)
    digest = compressed.hash.hexdigest()
    partial.rename(layout / "blobs/sha256" / digest)
    return (
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": f"sha256:{digest}",
            "size": compressed.size,
        },
        f"sha256:{uncompressed.hash.hexdigest()}",
    )


def _add_json(layout: Path, document: dict[str, Any], media_type: str) -> dict[str, Any]:
    data = json.dumps(document).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def write_layout(layout: Path, fills: list[Callable[[tarfile.TarFile], None]]) -> int:
    """An OCI layout of one image tagged TAG; returns the total size of its layer blobs."""
    (layout / "blobs/sha256").mkdir(parents=True)
    layers, diff_ids = zip(*(_add_layer(layout, fill) for fill in fills), strict=True)
    config = _add_json(
        layout,
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}},
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = _add_json(
        layout,
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": list(layers),
        },
        "application/vnd.oci.image.manifest.v1+json",
    )
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [{**manifest, "annotations": {"org.opencontainers.image.ref.name": TAG}}],
            }
        )
    )
    return sum(layer["size"] for layer in layers)


def split_tree(rootfs: Path, count: int, prefix: str = ".") -> list[Callable[[tarfile.TarFile], None]]:
    """`count` layer fillers: each declares every directory, then its share of the rest."""
    dirs: list[str] = []
    others: list[str] = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        rel = os.path.relpath(dirpath, rootfs)
        dirs.append(rel)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(Path(dirpath, d))]:
            others.append(os.path.normpath(os.path.join(rel, name)))
    share = -(-len(others) // count)

    def fill(chunk: list[str]) -> Callable[[tarfile.TarFile], None]:
        def add(tar: tarfile.TarFile) -> None:
            for rel in dirs + chunk:
                tar.add(rootfs / rel, arcname=os.path.normpath(f"{prefix}/{rel}"), recursive=False)

        return add

    return [fill(others[i * share : (i + 1) * share]) for i in range(count)]


# --- Measuring -------------------------------------------------------------------------------


def measure(command: list[str], log: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command, from GNU time's %e and %M.

    Not wait4(2) on a child of ours: Linux carries the RSS high-water mark of the forked copy
    of this (large) Python process across exec, so every child would seem as big as we are.
    """
    report = log.with_suffix(".time")
    with log.open("wb") as out:
        result = subprocess.run(
            ["/usr/bin/time", "-o", str(report), "-f", "%e %M", *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed ({result.returncode}):\n{log.read_text()[-3000:]}")
    wall, rss = report.read_text().split()[-2:]
    return float(wall), int(rss)


def run_umoci(layout: Path, scratch: Path) -> tuple[float, int]:
    bundle = scratch / "umoci-bundle"
    try:
        return measure(["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)], scratch / "umoci.log")
    finally:
        shutil.rmtree(bundle, ignore_errors=True)


def run_ours(layout: Path, scratch: Path) -> tuple[float, int]:
    target = scratch / "ours"
    target.mkdir()
    try:
        return measure([sys.executable, "-c", OURS, str(layout), TAG, str(target)], scratch / "ours.log")
    finally:
        shutil.rmtree(target, ignore_errors=True)


def resolve_twice(layout: Path, scratch: Path) -> tuple[float, float]:
    from kairos_build.core.cache import Cache
    from kairos_build.core.flavors import load_flavor
    from kairos_build.source.resolve import resolve_base

    flavor = load_flavor("debian")
    release = flavor.release(None)
    cache = Cache(scratch / "cache")
    times = []
    for _ in range(2):
        start = time.monotonic()
        resolve_base(f"oci:{layout}:{TAG}", flavor, release, cache)
        times.append(time.monotonic() - start)
    shutil.rmtree(scratch / "cache")
    return times[0], times[1]


def _mib(kib: float) -> str:
    return f"{kib / 1024:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rootfs", type=Path, help="a rootfs tree (default: cached or mmdebstrap)")
    parser.add_argument("--layers", type=int, default=3, help="layers to split the tree into")
    parser.add_argument("--runs", type=int, default=3, help="runs of each unpacker")
    parser.add_argument("--scratch", type=Path, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: both unpackers set file owners")
    if shutil.which("umoci") is None or not Path("/usr/bin/time").is_file():
        sys.exit("needs umoci and GNU time (apt-get install umoci time)")
    sys.path.insert(0, str(REPO))  # the kairos_build of this checkout, also for the children
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

    with tempfile.TemporaryDirectory(prefix="unpack-bench-", dir=args.scratch) as tmp:
        scratch = Path(tmp)
        rootfs = find_rootfs(args.rootfs, scratch)
        layout, double = scratch / "layout", scratch / "layout-x2"
        start = time.monotonic()
        size = write_layout(layout, split_tree(rootfs, args.layers))
        size2 = write_layout(double, [*split_tree(rootfs, 1, "copy-a"), *split_tree(rootfs, 1, "copy-b")])
        print(
            f"rootfs {rootfs}\nimage: {args.layers} gzip layers, {size / 2**20:.1f} MiB "
            f"compressed; x2 image: 2 layers, {size2 / 2**20:.1f} MiB "
            f"(built in {time.monotonic() - start:.1f} s)\n",
            flush=True,
        )

        results: dict[str, list[tuple[float, int]]] = {"umoci": [], "ours": []}
        for _ in range(args.runs):  # interleaved, so that cache warmth favours neither
            results["umoci"].append(run_umoci(layout, scratch))
            results["ours"].append(run_ours(layout, scratch))
        print(f"{'':8}{'run':>4}{'wall s':>9}{'peak RSS MiB':>14}")
        for name, runs in results.items():
            for number, (wall, rss) in enumerate(runs, 1):
                print(f"{name:8}{number:>4}{wall:9.2f}{_mib(rss):>14}")
        median = {
            name: (statistics.median(w for w, _ in runs), statistics.median(r for _, r in runs))
            for name, runs in results.items()
        }
        for name, (med_wall, med_rss) in median.items():
            print(f"{name:8}{'med':>4}{med_wall:9.2f}{_mib(med_rss):>14}")
        print(
            f"ours/umoci: time x{median['ours'][0] / median['umoci'][0]:.2f}, "
            f"peak RSS x{median['ours'][1] / median['umoci'][1]:.2f}\n"
        )

        miss, hit = resolve_twice(layout, scratch)
        print(
            f"resolve_base oci:LAYOUT:{TAG}: first (unpacks) {miss:.2f} s, "
            f"second (cache hit) {hit * 1000:.1f} ms\n"
        )

        _, rss1 = run_ours(layout, scratch)
        _, rss2 = run_ours(double, scratch)
        print(
            f"our peak RSS: image {_mib(rss1).strip()} MiB, twice as large "
            f"{_mib(rss2).strip()} MiB (x{rss2 / rss1:.2f})"
        )


if __name__ == "__main__":
    main()
