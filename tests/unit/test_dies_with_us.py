"""A program we start dies with us, even when we are killed by SIGKILL (setpriv --pdeathsig)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROGRAM = """
import sys
from kairos_build.core.tools import run
run(["sleep", "300"], name="the test's sleep")
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_host_tool_dies_when_kairos_build_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PROGRAM], env={**os.environ})
    deadline = time.monotonic() + 30
    children: list[int] = []
    while not children and time.monotonic() < deadline:
        children = [
            c for c in _children(parent.pid) if Path(f"/proc/{c}/comm").read_text().strip() == "sleep"
        ]
        time.sleep(0.1)
    assert children, "the tool never started"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    time.sleep(1)
    assert not [c for c in children if _running(c)]
