"""Logging and timed steps: every long step prints its name and how long it took."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

log = logging.getLogger("kairos-build")
_depth = 0
# Seconds per step name, for build.json and the closing summary.
timings: dict[str, float] = {}


def setup_logging(verbosity: int = 0) -> None:
    """Logs go to stderr so that --json output on stdout stays machine-readable."""
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
