"""What the agent does to the node: run programs (never through a shell), mount, say things."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from kairos_build.core.errors import KairosError

LABEL_DIR = Path("/dev/disk/by-label")
RUN_DIR = Path("/run/kairos")


class NodeError(KairosError):
    """The node cannot do what was asked; nothing was changed (or the change was undone)."""


def say(message: str) -> None:
    """One line on stderr; when that is not the journal already (a user's terminal), in the
    kernel log too, where the console and the journal show it."""
    print(f"kairos-agent: {message}", file=sys.stderr, flush=True)
    if "JOURNAL_STREAM" in os.environ:
        return
    with contextlib.suppress(OSError), open("/dev/kmsg", "w") as kmsg:
        kmsg.write(f"kairos-agent: {message}\n")


def run(
    argv: Sequence[str],
    *,
    input_text: str | None = None,
    capture: bool = False,
    env: dict[str, str] | None = None,
) -> str:
    """Run a program; its output only shown when it fails (the last lines of it)."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input_text,
            text=True,
            check=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if not capture else subprocess.PIPE,
            env={**os.environ, **(env or {})},
            stdin=None if input_text is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise NodeError(
            f"{argv[0]} is not installed on this node", hint="the image needs it (see its flavor's packages)"
        ) from exc
    if proc.returncode != 0:
        tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-15:])
        raise NodeError(f"{Path(argv[0]).name} failed (exit {proc.returncode}): {tail}")
    return proc.stdout or ""


def label_device(label: str) -> Path | None:
    """The block device of the filesystem labelled `label`, None when there is none."""
    path = LABEL_DIR / label
    return path.resolve() if path.exists() else None


def settle() -> None:
    with contextlib.suppress(NodeError):
        run(["udevadm", "settle", "--timeout=20"])


@contextlib.contextmanager
def mounted(
    device: Path | str, options: str = "ro", fstype: str | None = None, where: Path | None = None
) -> Iterator[Path]:
    """`device` mounted on a fresh folder under /run/kairos (or `where`) for the block; always
    unmounted after, synced first when it was writable."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    target = where or Path(tempfile.mkdtemp(prefix="mnt-", dir=RUN_DIR))
    target.mkdir(parents=True, exist_ok=True)
    argv = ["mount", "-o", options, *(["-t", fstype] if fstype else []), str(device), str(target)]
    run(argv)
    try:
        yield target
    finally:
        if "rw" in options.split(","):
            os.sync()
        run(["umount", str(target)])
        with contextlib.suppress(OSError):
            target.rmdir()


@contextlib.contextmanager
def writable(mountpoint: Path) -> Iterator[Path]:
    """An already mounted filesystem (COS_STATE, COS_RECOVERY) remounted read-write for the
    block, read-only again after."""
    run(["mount", "-o", "remount,rw", str(mountpoint)])
    try:
        yield mountpoint
    finally:
        os.sync()
        run(["mount", "-o", "remount,ro", str(mountpoint)])


def fsync_path(path: Path) -> None:
    """A file's data, or a folder's entries (a rename in it), on the disk before going on."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(source: Path, target: Path) -> None:
    """rename(2) `source` over `target`, then the folder synced: after a power cut the folder
    holds either the old file or the new one, never neither."""
    fsync_path(source)
    os.replace(source, target)
    fsync_path(target.parent)


def cmdline() -> list[str]:
    try:
        return Path("/proc/cmdline").read_text().split()
    except OSError:
        return []


def cmdline_value(key: str) -> str | None:
    for word in cmdline():
        name, sep, value = word.partition("=")
        if name == key:
            return value if sep else ""
    return None
