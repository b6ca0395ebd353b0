"""Reproducible output: one timestamp (SOURCE_DATE_EPOCH) for everything a tool would take
from the clock, so the same inputs give the same bytes on another day.

Tools are told through their environment (mksquashfs, mtools and dosfstools read
SOURCE_DATE_EPOCH; e2fsprogs reads E2FSPROGS_FAKE_TIME). pycdlib has no such setting, so its
modules are given a clock that always says the epoch, in UTC, while an ISO is made.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from time import struct_time
from types import ModuleType
from typing import Any
from unittest import mock

from kairos_build.core import rootfs
from kairos_build.core.errors import InputError


def given_epoch() -> int | None:
    """SOURCE_DATE_EPOCH from the environment, None when unset; a bad value is an error."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    if not value.isdigit():
        raise InputError(
            f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds",
            hint="e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)",
        )
    return int(value)


def source_date_epoch(default: int = 0) -> int:
    """SOURCE_DATE_EPOCH from the environment, else `default`; a bad value is an error."""
    given = given_epoch()
    return default if given is None else given


def build_epoch(root: Path) -> int:
    """SOURCE_DATE_EPOCH, else the date of the base's os-release (shipped by the distro's own
    package, so the same base gives the same date on every rebuild; never the wall clock)."""
    for name in ("etc/os-release", "usr/lib/os-release"):
        try:
            return source_date_epoch(default=int(rootfs.resolve_in(root, name).stat().st_mtime))
        except OSError:
            continue
    return source_date_epoch(default=0)


def clamp_newer(root: Path, epoch: int) -> None:
    """No file under `root` dated after `epoch`: what conversion wrote (kairos-release, the
    initramfs, package files) would otherwise carry the day of the build into every image."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_mtime > epoch or st.st_atime > epoch:
                os.utime(path, (min(st.st_atime, epoch), min(st.st_mtime, epoch)), follow_symlinks=False)


def tool_env(epoch: int) -> dict[str, str]:
    # LC_ALL=C: mke2fs -d orders each folder with alphasort, which collates by locale.
    return {"SOURCE_DATE_EPOCH": str(epoch), "E2FSPROGS_FAKE_TIME": str(epoch), "LC_ALL": "C"}


def clamp_times(root: Path, epoch: int) -> None:
    """Every file and folder under `root` (links themselves, not their targets) dated `epoch`:
    folders we stage for mkfs would otherwise carry the build's wall clock."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


class _FrozenClock:
    """The `time` module as pycdlib sees it: always `epoch`, always UTC."""

    def __init__(self, epoch: int) -> None:
        self._epoch = epoch

    def time(self) -> float:
        return float(self._epoch)

    def localtime(self, seconds: float | None = None) -> struct_time:
        return time.gmtime(self._epoch if seconds is None else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def frozen_pycdlib_clock(epoch: int) -> Iterator[None]:
    """Within the block, every pycdlib module that imported `time` reads the frozen clock."""
    clock = _FrozenClock(epoch)
    modules: list[ModuleType] = [
        m
        for name, m in list(sys.modules.items())
        if name.startswith("pycdlib.") and getattr(m, "time", None) is time
    ]
    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(mock.patch.object(module, "time", clock))
        yield
