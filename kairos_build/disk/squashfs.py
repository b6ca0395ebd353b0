"""Make a squashfs image of a rootfs, with a compression parsed once from `--compression`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kairos_build.core.errors import InputError
from kairos_build.core.tools import run
from kairos_build.disk.filesystems import RUNTIME_EXCLUDES

# zstd at level 3: measured on a converted Debian trixie (benchmarks/compression_bench.py,
# table in docs/formats.md) it builds several times faster than level 9 and up for a few % more
# bytes, and reads back as fast as any level.
DEFAULT_ZSTD_LEVEL = 3
# Levels each algorithm accepts and the one mksquashfs uses when none is given.
_LEVELS = {"zstd": (range(1, 23), DEFAULT_ZSTD_LEVEL), "gzip": (range(1, 10), 9)}
# xz's branch/call/jump filter makes machine code compress better; one per target arch.
_BCJ_FILTERS = {"amd64": "x86", "arm64": "arm"}
ALGORITHMS = ("zstd", "xz", "gzip", "lz4", "lzo")
SPEC_HELP = "zstd, zstd:LEVEL (1-22), xz (BCJ filter of the arch), gzip, gzip:LEVEL (1-9), lz4, lzo"


@dataclass(frozen=True)
class Compression:
    """A squashfs compression: the algorithm, its level, and for xz the BCJ filter."""

    algorithm: str = "zstd"
    level: int | None = DEFAULT_ZSTD_LEVEL
    bcj: str | None = None

    @classmethod
    def parse(cls, spec: str, arch: str = "amd64") -> Compression:
        """`zstd`, `zstd:19`, `xz`, `gzip:6`, ... for a rootfs of `arch`; bad ones are refused."""
        algorithm, colon, level_text = spec.strip().lower().partition(":")
        hint = f"use {SPEC_HELP}"
        if algorithm not in ALGORITHMS:
            raise InputError(f"compression {spec!r} is not known", hint=hint)
        if algorithm not in _LEVELS:
            if colon:
                raise InputError(f"compression {algorithm} takes no level (got {spec!r})", hint=hint)
            bcj = _bcj_filter(arch) if algorithm == "xz" else None
            return cls(algorithm, None, bcj)
        levels, default = _LEVELS[algorithm]
        if not colon:
            return cls(algorithm, default)
        if not level_text.isdigit() or int(level_text) not in levels:
            raise InputError(
                f"compression level {level_text!r} of {algorithm} is not valid",
                hint=f"{algorithm} levels go from {levels.start} to {levels.stop - 1}",
            )
        return cls(algorithm, int(level_text))

    @property
    def spec(self) -> str:
        """The canonical form, e.g. `zstd:3`, `xz+x86`: names the compression in cache keys."""
        if self.level is not None:
            return f"{self.algorithm}:{self.level}"
        return f"{self.algorithm}+{self.bcj}" if self.bcj else self.algorithm

    def __str__(self) -> str:
        return self.spec

    def mksquashfs_args(self) -> list[str]:
        args = ["-comp", self.algorithm]
        if self.level is not None:
            args += ["-Xcompression-level", str(self.level)]
        if self.bcj is not None:
            args += ["-Xbcj", self.bcj]
        return args


def _bcj_filter(arch: str) -> str:
    if arch not in _BCJ_FILTERS:
        raise InputError(
            f"no xz BCJ filter is known for arch {arch!r}",
            hint=f"use zstd, or an arch among {', '.join(_BCJ_FILTERS)}",
        )
    return _BCJ_FILTERS[arch]


@cache
def mksquashfs_version() -> str:
    """'mksquashfs version 4.5.1 (2022/03/17)': part of the squashfs cache key."""
    return run(["mksquashfs", "-version"], capture=True).splitlines()[0].strip()


def squashfs_options(compression: Compression, epoch: int) -> list[str]:
    """Every mksquashfs option but the paths: what shapes the bytes (also in the cache key).

    No `-processors` and no `-mem`: mksquashfs then compresses on every core and uses up to a
    quarter of the RAM for its caches, which is what a build machine wants.
    """
    return [
        "-noappend",
        "-no-progress",
        "-quiet",
        *compression.mksquashfs_args(),
        # Reproducible: fixed times; mksquashfs already sorts entries and is otherwise stable.
        "-mkfs-time",
        str(epoch),
        "-all-time",
        str(epoch),
        # Runtime-only directories are mounted at boot; ship them empty. Last: mksquashfs
        # reads every word after -e as a path to exclude, options included.
        "-wildcards",
        "-e",
        *RUNTIME_EXCLUDES,
    ]


def make_squashfs(root: Path, output: Path, compression: Compression | None = None, epoch: int = 0) -> None:
    """Write `root` as a squashfs to `output` (replaced if present), every time `epoch`."""
    options = squashfs_options(compression or Compression(), epoch)
    # mksquashfs refuses SOURCE_DATE_EPOCH beside -mkfs-time; the options carry the epoch.
    run(["mksquashfs", str(root), str(output), *options], timeout=3600, unset=("SOURCE_DATE_EPOCH",))
