"""Logging and timed steps: every long step prints its name and how long it took."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

log = logging.getLogger("kairos-build")
_depth = 0
# Seconds per step name, for build.json and the closing summary.
timings: dict[str, float] = {}


_show_progress = True


def setup_logging(verbosity: int = 0) -> None:
    """Logs go to stderr so that --json output on stdout stays machine-readable."""
    global _show_progress
    _show_progress = verbosity >= 0
    level = logging.INFO if verbosity == 0 else logging.DEBUG if verbosity > 0 else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Log `name…`, run the body, then log how long it took (also on failure)."""
    global _depth
    indent = "  " * _depth
    log.info("%s‣ %s…", indent, name)
    start = time.monotonic()
    _depth += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _depth -= 1
        elapsed = time.monotonic() - start
        timings[name] = timings.get(name, 0.0) + elapsed
        log.info("%s  %s %s (%.1f s)", indent, "done:" if ok else "failed:", name, elapsed)


def quiet_progress() -> None:
    """No progress bars (--json, -q): stdout and stderr stay clean for machines."""
    global _show_progress
    _show_progress = False


class _NoBar:
    def update(self, _n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress(total: int | None, description: str) -> Iterator[Any]:
    """A byte progress bar on stderr, only for a person watching a terminal."""
    if not (_show_progress and sys.stderr.isatty()):
        yield _NoBar()
        return
    with tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
    ) as bar:
        yield bar
