"""Every boot retry is written down: a kernel panic under TCG booted again, KVM given up for
TCG, a hung firmware power-cycled. With KAIROS_BUILD_RETRY_LOG set, each one appends a JSON
line (kind, detail, and the pytest test it happened in) to that file, which the test suite
reads at its end: a retry is never silent there, and too many fail the run. Unset, nothing is
written; the caller logs its warning either way. Standard library only: the test harness
imports it too.
"""

from __future__ import annotations

import json
import logging
import os

ENV = "KAIROS_BUILD_RETRY_LOG"


def note_retry(kind: str, detail: str) -> None:
    """Append one line for this retry to $KAIROS_BUILD_RETRY_LOG, if set. One write of one
    line to a file opened for appending: lines from concurrent processes do not interleave."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"kind": kind, "detail": detail, "test": os.environ.get("PYTEST_CURRENT_TEST", "")})
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:  # a retry must not fail for want of its record
        logging.getLogger("kairos-build").warning("could not record a retry in %s: %s", path, exc)
