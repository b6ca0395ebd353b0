"""Run a program inside a rootfs: its own mount and PID namespace, chrooted.

The mounts (/proc, /sys, a minimal /dev, /run, /tmp) are made inside a private mount
namespace that `unshare` creates for the one command. When the command ends (normally, on
error, on Ctrl-C or even when killed) the namespace dies and every mount with it, so the host
can never be left with a leaked mount. /dev holds only a few harmless nodes, not the host's
disks, so a package script cannot reach them.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from kairos_build import rootfs
from kairos_build.errors import HostileContentError
from kairos_build.log import log
from kairos_build.tools import require_tool, run

# Runs on the host as `sh -c SCRIPT sh ROOT CMD...`: constant text, the paths and the command
# arrive as positional arguments and are always quoted, never parsed as shell code.
_SETUP = r"""
set -eu
root=$1; shift
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o mode=0755,nosuid,size=64m tmpfs "$root/dev"
for node in null zero full random urandom tty; do
    : > "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
exec chroot "$root" "$@"
"""

_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C.UTF-8",
    "TERM": "dumb",
}
_PASSED_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def _ensure_mount_points(root: Path) -> None:
    """The mount points must be real directories of the rootfs, never links out of it."""
    for name in ("proc", "sys", "dev", "run", "tmp"):
        path = root / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise HostileContentError(f"/{name} in the rootfs is not a directory")


def run_in_root(
    root: Path, cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 3600
) -> str:
    """Run `cmd` chrooted into `root` with a clean environment; return its output."""
    _ensure_mount_points(root)
    full_env = dict(_BASE_ENV)
    full_env.update({k: os.environ[k] for k in _PASSED_ENV if k in os.environ})
    full_env.update(env or {})
    env_args = ["env", "-i", *(f"{k}={v}" for k, v in sorted(full_env.items()))]
    argv = [
        require_tool("unshare"), "--mount", "--propagation", "private", "--pid", "--fork",
        "--kill-child", "sh", "-c", _SETUP, "sh", str(root), *env_args, *cmd,
    ]
    try:
        return run(argv, timeout=timeout)
    finally:
        wait_for_processes_in(root)


def wait_for_processes_in(root: Path, limit: float = 30.0) -> None:
    """Wait until no process runs chrooted in `root`.

    On Ctrl-C, `unshare` is killed and the kernel then kills everything in its PID namespace,
    but not synchronously: a dpkg still unpacking would race with the removal of the
    half-converted tree (seen: rmtree failing on a file dpkg had just removed).
    """
    prefix = str(root.resolve())
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        inside = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    target = os.readlink(proc / "root")
                except OSError:
                    continue  # gone already, or not ours to inspect
                if target == prefix or target.startswith(prefix + "/"):
                    inside.append(proc.name)
        if not inside:
            return
        time.sleep(0.1)
    log.warning("processes %s still run inside %s after %.0f s", " ".join(inside), root, limit)


@contextmanager
def network_and_no_daemons(root: Path) -> Iterator[None]:
    """For package installs: the host's DNS config, and no service started by a postinst.

    Both files are put back as the image had them afterwards (also on error or Ctrl-C).
    """
    resolv = "etc/resolv.conf"
    link = rootfs.resolve_in(root, resolv, follow_last=False)
    saved_link = os.readlink(link) if link.is_symlink() else None
    saved_text = None if saved_link is not None else rootfs.read_text(root, resolv)
    host_resolv = Path("/etc/resolv.conf")
    rootfs.write_text(root, resolv, host_resolv.read_text() if host_resolv.exists() else "")
    rootfs.write_text(root, "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode=0o755)
    try:
        yield
    finally:
        rootfs.remove(root, "usr/sbin/policy-rc.d")
        rootfs.remove(root, resolv)
        if saved_link is not None:
            rootfs.symlink(root, resolv, saved_link)
        elif saved_text is not None:
            rootfs.write_text(root, resolv, saved_text)
