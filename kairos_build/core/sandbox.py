"""Run a program of a rootfs in a bubblewrap sandbox: code from a base image can change
nothing outside its own tree.

What the image's code gets, and why each piece:
- the rootfs as `/`, through bubblewrap's pivot_root (no way back to the host's tree, even
  with chroot tricks) and mounted nosuid,nodev: a device node made in the tree cannot be
  opened;
- a fresh `/proc` of its own PID namespace (it sees and signals only its own processes), with
  `/proc/sys` and the other kernel knobs read-only; no `/sys` at all (a package script has no
  business with the host's devices or firmware: shim's postinst runs grub-install when it
  sees EFI variables);
- a `/dev` holding only null, zero, full, random, urandom, tty and its own pts and shm;
- its own UTS, IPC and cgroup namespaces; the host's network, which the package manager needs
  (without CAP_NET_ADMIN it cannot reconfigure it);
- only the capabilities package managers use (PACKAGE_CAPS), dropped from the bounding set
  too, with NO_NEW_PRIVS: no mount, mknod, module loading, raw I/O, clock, reboot or ptrace,
  and no setuid or file-capability binary can give any of them back;
- a system-call filter (convert/seccomp.py) against what needs no capability: a new user
  namespace, the kernel keyrings, opening files by handle.

bubblewrap, run as root, keeps the bounding set whole; the two `setpriv` calls in front of it
narrow it: the first puts what bubblewrap needs to build the sandbox in the inheritable set
(an exec as root keeps inheritable capabilities), the second drops everything else from the
bounding set. bubblewrap then drops its own tools before the image's command runs.

Every process of the sandbox dies with the build: the chain carries a parent-death signal, and
bubblewrap's `--die-with-parent` takes the sandbox's PID 1, and with it the whole PID
namespace, down when the build is killed, even by SIGKILL.
"""

from __future__ import annotations

import json
import os
import platform
import select
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from kairos_build.core.denials import explain_failure
from kairos_build.core.errors import BuildError, HostileContentError
from kairos_build.core.log import log
from kairos_build.core.seccomp import seccomp_program
from kairos_build.core.tools import require_tool

# dpkg, rpm and apk setting owners, modes, setuid/setgid bits (FSETID keeps them through a
# chown) and file capabilities (SETFCAP: ping's postinst falls back to setuid root without
# it); apt dropping to _apt for downloads (SETUID, SETGID); scripts stopping what they started
# in their own PID namespace (KILL); PAM tools writing audit records (AUDIT_WRITE).
# Not DAC_READ_SEARCH: DAC_OVERRIDE already reads everything, and DAC_READ_SEARCH would also
# open any file of the host's filesystem by its handle (open_by_handle_at, "shocker").
PACKAGE_CAPS = (
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setfcap",
    "audit_write",
)
# What bubblewrap itself uses, as root, to make the namespaces and mounts; it never reaches
# the image's command.
_SETUP_CAPS = ("sys_admin", "sys_chroot")
# Kernel knobs under /proc a root process could write with DAC_OVERRIDE alone (bubblewrap
# covers irq and bus itself, and misses /proc/sys: it mistakes that directory's EACCES for
# "already read-only"). Entries the host kernel lacks are skipped.
_READ_ONLY_PROC = (
    "sys",
    "sysrq-trigger",
    "irq",
    "bus",
    "fs",
    "acpi",
    "scsi",
    "mtrr",
    "latency_stats",
    "timer_list",
    "driver",
)

_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C.UTF-8",
    "TERM": "dumb",
}
_PASSED_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def _ensure_mount_points(root: Path) -> None:
    """The mount points must be real directories of the rootfs, never links out of it."""
    for name in ("proc", "dev", "run", "tmp"):
        path = root / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise HostileContentError(f"/{name} in the rootfs is not a directory")


def _caps(names: Sequence[str], sign: str = "+") -> str:
    return ",".join(f"{sign}{name}" for name in names)


# A host folder the command may write into, and where it appears inside the sandbox (under
# /tmp, a tmpfs of the sandbox: the mount point is never made in the image's tree).
Bind = tuple[Path, str]


def sandbox_argv(
    root: Path,
    cmd: Sequence[str],
    env: Mapping[str, str],
    info_fd: int,
    seccomp_fd: int | None,
    binds: Sequence[Bind] = (),
    read_only: bool = False,
) -> list[str]:
    """The whole command line: setpriv twice, then bubblewrap, then `cmd` inside `root`."""
    setpriv = require_tool("setpriv")
    argv = [
        setpriv,
        "--pdeathsig",
        "KILL",
        "--inh-caps",
        _caps((*_SETUP_CAPS, *PACKAGE_CAPS)),
        "--",
        setpriv,
        "--bounding-set",
        "-all," + _caps(PACKAGE_CAPS),
        "--",
        require_tool("bwrap"),
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--ro-bind" if read_only else "--bind",
        str(root),
        "/",
        "--proc",
        "/proc",
    ]
    for name in _READ_ONLY_PROC:
        if os.path.lexists(f"/proc/{name}"):
            argv += ["--ro-bind-try", f"/proc/{name}", f"/proc/{name}"]
    argv += [
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--tmpfs",
        "/dev/shm",
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        "--perms",
        "0755",
        "--tmpfs",
        "/run",
    ]
    for source, inside in binds:
        if not inside.startswith("/tmp/") or ".." in inside.split("/"):
            raise ValueError(f"a sandbox bind goes under /tmp: {inside}")
        argv += ["--bind", str(source), inside]
    argv += ["--cap-drop", "ALL"]
    for name in PACKAGE_CAPS:
        argv += ["--cap-add", f"CAP_{name.upper()}"]
    argv += ["--clearenv"]
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--chdir", "/", "--info-fd", str(info_fd), "--", *cmd]
    return argv


def run_in_root(
    root: Path,
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 3600,
    binds: Sequence[Bind] = (),
    no_sync: bool = False,
    read_only: bool = False,
) -> str:
    """Run `cmd` in the sandbox over `root` with a clean environment; return its output.

    `binds` are host folders shown under the sandbox's /tmp (the shared package cache);
    `no_sync` turns fsync and its kin into no-ops (for a tree that is thrown away if the build
    dies); `read_only` shows the tree read-only (a tool of a cached, finished rootfs: it
    writes only into the binds). A failure names the command and, for a package script, the
    package and what the sandbox refused it (convert/denials.py)."""
    _ensure_mount_points(root)
    full_env = dict(_BASE_ENV)
    full_env.update({k: os.environ[k] for k in _PASSED_ENV if k in os.environ})
    full_env.update(env or {})
    info_read, info_write = os.pipe()
    seccomp_fd = _seccomp_fd(no_sync)
    passed = (info_write,) if seccomp_fd is None else (info_write, seccomp_fd)
    try:
        argv = sandbox_argv(root, cmd, full_env, info_write, seccomp_fd, binds, read_only)
        log.debug("$ [sandbox %s] %s", root, " ".join(cmd))
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=passed
        )
    except BaseException:
        os.close(info_read)
        raise
    finally:
        for fd in passed:
            os.close(fd)
    sandbox_init = None
    try:
        sandbox_init = _sandbox_init(info_read)
        out_bytes, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise BuildError(f"{' '.join(cmd)} did not finish within {timeout:.0f} s in the sandbox") from exc
    finally:
        # Also on Ctrl-C: kill bubblewrap (its parent-death signal takes the sandbox down)
        # and wait until the PID namespace is empty, so nobody writes into a tree that the
        # caller is about to remove.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _wait_for_exit(sandbox_init, cmd)
    out = out_bytes.decode(errors="replace")
    if proc.returncode != 0:
        raise explain_failure(cmd, proc.returncode, out)
    if out.strip():
        log.debug("%s", out.rstrip())
    return out


def _seccomp_fd(no_sync: bool) -> int | None:
    """A pipe holding the system-call filter for bubblewrap to read (convert/seccomp.py)."""
    program = seccomp_program(no_sync=no_sync)
    if program is None:
        log.warning(
            "no system-call filter for %s: the sandbox relies on capabilities alone", platform.machine()
        )
        return None
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as pipe:
        pipe.write(program)  # a few hundred bytes: far below a pipe's buffer
    return read_end


def _sandbox_init(info_read: int) -> int | None:
    """A pidfd on the sandbox's PID 1, from bubblewrap's --info-fd report (None if it never
    started: bubblewrap then failed before cloning, and says why on its output)."""
    with os.fdopen(info_read, "rb") as info:
        report = info.read(4096)
    try:
        pid = int(json.loads(report)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None  # gone already


def _wait_for_exit(pidfd: int | None, cmd: Sequence[str], limit: float = 30.0) -> None:
    """Wait until the sandbox's PID 1 has exited. The kernel kills and reaps every other
    process of the namespace before PID 1 counts as exited, so then none is left."""
    if pidfd is None:
        return
    try:
        ready, _, _ = select.select([pidfd], [], [], limit)
        if not ready:
            log.warning("the sandbox of %s still runs %.0f s after it ended", cmd[0], limit)
    finally:
        os.close(pidfd)
