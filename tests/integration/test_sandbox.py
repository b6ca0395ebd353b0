"""The conversion sandbox against a hostile base: a copy of the real bootstrapped trixie whose
apt-get first tries what code from an image must not do to the build host, writes down what
happened, then runs the real apt-get. The conversion must succeed, every attempt must fail, and
a killed build must take every process it started with it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kairos_build.core.sandbox import PACKAGE_CAPS
from tests.conftest import read_until, run_cli

pytestmark = pytest.mark.integration

# Capability numbers (linux/capability.h) of what the sandbox keeps.
CAP_NUMBERS = {
    "chown": 0,
    "dac_override": 1,
    "fowner": 3,
    "fsetid": 4,
    "kill": 5,
    "setgid": 6,
    "setuid": 7,
    "audit_write": 29,
    "setfcap": 31,
}
REPORT = "usr/share/kairos-hostile/report"

# Each probe prints NAME=allowed or NAME=denied. The clock and /proc/sys probes write back
# the value they read, so even a sandbox that let them through would change nothing.
PROBES = """\
probe() {{
    name=$1; shift
    if "$@" >/dev/null 2>&1; then echo "$name=allowed"; else echo "$name=denied"; fi
}}
probe mknod-block-in-tree mknod /root/hostdisk b {major} {minor}
probe read-host-disk dd if=/root/hostdisk of=/dev/null bs=512 count=1
probe mknod-char mknod /root/hostmem c 1 1
probe mount mount -t tmpfs kairos-probe /mnt
probe mount-sysfs mount -t sysfs sysfs /mnt
probe write-proc-sys sh -c 'cat /proc/sys/vm/swappiness > /proc/sys/vm/swappiness'
probe see-sys test -e /sys/kernel
probe hostname hostname kairos-hostile-probe
probe clock sh -c 'date -s "@$(date +%s)"'
probe chroot chroot / true
probe signal-host-process kill -0 {host_pid}
probe reach-host-path test -e {host_marker}
probe see-host-root test -e /oldroot/proc
probe user-namespace unshare --user true
probe mount-in-user-namespace unshare --user --map-root-user --mount mount -t tmpfs kairos-probe /mnt
grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|CapInh|NoNewPrivs):' /proc/self/status | tr -d ' \\t'
echo "dev=$(ls /dev | sort | tr '\\n' ' ')"
echo "processes=$(ls /proc | grep -c '^[0-9]')"
"""
WRAPPER = """#!/bin/sh
# A hostile package manager (kairos-build test): probes once, then the real apt-get.
if [ ! -e /{report} ]; then
    mkdir -p "$(dirname /{report})"
    ( {probes} ) > /{report} 2>&1
fi
{extra}
exec /usr/bin/apt-get.real "$@"
"""


def hostile_copy(base: Path, target: Path, probes: str, extra: str = "") -> Path:
    """A copy of `base` whose apt-get runs `probes` (shell) first and `extra` on every call."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(target)], check=True)
    apt_get = target / "usr/bin/apt-get"
    apt_get.rename(target / "usr/bin/apt-get.real")
    apt_get.write_text(WRAPPER.format(report=REPORT, probes=probes, extra=extra))
    apt_get.chmod(0o755)
    return target


def host_disk() -> tuple[int, int]:
    """Major and minor numbers of the block device holding the host's /."""
    dev = os.stat("/").st_dev
    return os.major(dev), os.minor(dev)


def capability_bits(names: tuple[str, ...]) -> int:
    return sum(1 << CAP_NUMBERS[name] for name in names)


def test_a_hostile_base_converts_and_every_probe_is_denied(trixie_base: Path, tmp_path: Path) -> None:
    marker = tmp_path / "host-only-marker"
    marker.write_text("the sandbox must not see this\n")
    major, minor = host_disk()
    probes = PROBES.format(major=major, minor=minor, host_pid=os.getpid(), host_marker=marker)
    base = hostile_copy(trixie_base, tmp_path / "base", probes)
    hostname, mounts_before = socket.gethostname(), Path("/proc/self/mountinfo").read_text()
    out = tmp_path / "converted"
    try:
        result = run_cli(
            "convert",
            f"dir:{base}",
            "--flavor",
            "debian",
            "--output",
            f"dir:{out}",
            "--cache-dir",
            str(tmp_path / "cache"),
        )
    finally:
        if socket.gethostname() != hostname:  # a broken sandbox must not leave the host renamed
            socket.sethostname(hostname)
            pytest.fail("the hostile base renamed the build host")
    assert result.returncode == 0, result.stderr[-4000:]

    report = dict(line.split("=", 1) for line in (out / REPORT).read_text().splitlines() if "=" in line)
    probes_run = [line.split()[1] for line in PROBES.splitlines() if line.startswith("probe ")]
    assert len(probes_run) == 15
    assert {name: report.get(name) for name in probes_run} == dict.fromkeys(probes_run, "denied")
    # Only the package managers' capabilities, in every set that could hand one back.
    kept = capability_bits(PACKAGE_CAPS)
    status = {
        line.split(":")[0]: line.split(":")[1]
        for line in (out / REPORT).read_text().splitlines()
        if ":" in line
    }
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[field], 16) == kept, (field, status[field])
    assert int(status["CapAmb"], 16) & ~kept == 0
    assert status["NoNewPrivs"] == "1"
    # No disk, only the harmless nodes; no process of the host to be seen.
    assert report["dev"].split() == sorted(
        [
            "core",
            "fd",
            "full",
            "null",
            "ptmx",
            "pts",
            "random",
            "shm",
            "stderr",
            "stdin",
            "stdout",
            "tty",
            "urandom",
            "zero",
        ]
    )
    assert int(report["processes"]) < 10
    # And the host is as it was.
    assert socket.gethostname() == hostname
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    # (Only the probes' own mounts count: the suite's other worker may mount meanwhile.)
    new_mounts = set(Path("/proc/self/mountinfo").read_text().splitlines()) - set(mounts_before.splitlines())
    assert not [m for m in new_mounts if "kairos-probe" in m or " /mnt " in m], new_mounts
    # What the package managers need still works: arping's postinst gave it its file
    # capability (cap_net_raw) with setcap, and it is in the converted tree.
    assert os.getxattr(out / "usr/bin/arping", "security.capability")


def test_a_denied_action_in_a_package_script_names_the_package_and_the_command(
    trixie_base: Path, tmp_path: Path
) -> None:
    package = tmp_path / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN/control").write_text(
        "Package: kairos-test-denied\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: kairos-build tests <tests@example.invalid>\nDescription: mounts in postinst\n"
    )
    postinst = package / "DEBIAN/postinst"
    postinst.write_text("#!/bin/sh\nset -e\nmount -t tmpfs kairos-test /mnt\n")
    postinst.chmod(0o755)
    deb = tmp_path / "kairos-test-denied.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(package), str(deb)], check=True, capture_output=True
    )
    base = hostile_copy(
        trixie_base, tmp_path / "base", "true", extra="dpkg -i /root/kairos-test-denied.deb || exit $?"
    )
    (base / "root/kairos-test-denied.deb").write_bytes(deb.read_bytes())
    result = run_cli(
        "convert",
        f"dir:{base}",
        "--flavor",
        "debian",
        "--output",
        f"dir:{tmp_path / 'out'}",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 1, result.stderr[-4000:]
    error = result.stderr[result.stderr.index("error:") :]
    assert "'apt-get update -q' failed in the conversion sandbox" in error
    assert "package kairos-test-denied: post-installation script failed" in error
    assert "refused by the sandbox:" in error and "mount: /mnt: permission denied" in error
    assert "conversion sandbox" in error.split("hint:")[-1]
    assert "bwrap" not in error and "setpriv" not in error
    assert not (tmp_path / "out").exists()


def _process_tree(root_pid: int) -> dict[int, str]:
    """Every descendant of `root_pid` (and itself): pid -> start time (against pid reuse)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        starts[pid] = fields[19]
    found, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        if pid in starts:
            found[pid] = starts[pid]
        todo += children.get(pid, [])
    return found


def _still_running(pid: int, start: str) -> bool:
    """True when `pid` is the same process and not a zombie (dead, waiting to be reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] != "Z"


def test_sigkill_during_the_install_leaves_no_process_behind(trixie_base: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kairos_build",
            "convert",
            f"dir:{trixie_base}",
            "--flavor",
            "debian",
            "--output",
            f"dir:{tmp_path / 'out'}",
            "--cache-dir",
            str(cache),
        ],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen = read_until(proc, "installing")
    assert "installing" in seen, seen
    deadline = time.monotonic() + 300
    # Wait until the package manager really runs in the sandbox (apt-get or dpkg below us).
    names: set[str] = set()
    while time.monotonic() < deadline:
        tree = _process_tree(proc.pid)
        names = {
            Path(f"/proc/{pid}/comm").read_text().strip()
            for pid in tree
            if Path(f"/proc/{pid}/comm").exists()
        }
        if names & {"apt-get", "dpkg", "http"}:
            break
        time.sleep(0.2)
    assert names & {"apt-get", "dpkg", "http"}, names
    time.sleep(2)
    tree = _process_tree(proc.pid)
    assert len(tree) > 3, tree
    sandboxes = {_pid_namespace(pid) for pid in tree} - {_pid_namespace(os.getpid()), None}
    assert sandboxes, "the package manager does not run in a PID namespace of its own"
    proc.kill()
    proc.wait(timeout=10)
    time.sleep(1)
    left = {pid: _cmdline(pid) for pid, start in tree.items() if _still_running(pid, start)}
    # Also what the package manager started after the snapshot: anything in its namespace.
    left |= {
        int(entry.name): _cmdline(int(entry.name))
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and _pid_namespace(int(entry.name)) in sandboxes
        and _still_running(int(entry.name), _start_time(int(entry.name)))
    }
    assert not left, left
    assert str(cache) not in Path("/proc/self/mountinfo").read_text()
    assert not (tmp_path / "out").exists()


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return "?"
