"""The system-call filter of the conversion sandbox, as the classic BPF program bubblewrap's
`--seccomp FD` loads before the image's command starts.

Dropped capabilities already refuse mount, mknod, modules and the rest; three doors stay open
to root without them, and Docker's default profile closes the same ones:
- a new user namespace (`unshare -U`, `clone(CLONE_NEWUSER)`) would hand the image's code
  every capability again inside it, and with them mounts of its own;
- the kernel keyrings are not namespaced: root's user keyring is the host's;
- `open_by_handle_at` opens any file of the filesystem by its handle, past the sandbox's root.
Each fails with EPERM. `clone3` passes its flags in memory, out of a filter's reach: it fails
with ENOSYS, and the C libraries then fall back to `clone`. Calls through another ABI (i386,
x32), which would dodge these numbers, fail with EPERM.
"""

from __future__ import annotations

import errno
import platform
import struct

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
# Offsets in struct seccomp_data: nr, arch, then args[0] (its low 32 bits: little endian).
_NR, _ARCH, _ARG0 = 0, 4, 16
_CLONE_NEWUSER = 0x10000000
_X32_SYSCALL_BIT = 0x40000000

# Per host architecture: the audit arch and the numbers of the calls we look at.
_ARCHES = {
    "x86_64": (
        0xC000003E,
        {
            "clone": 56,
            "unshare": 272,
            "clone3": 435,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "open_by_handle_at": 304,
            "fsync": 74,
            "fdatasync": 75,
            "sync": 162,
            "syncfs": 306,
            "sync_file_range": 277,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "clone": 220,
            "unshare": 97,
            "clone3": 435,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "open_by_handle_at": 265,
            "fsync": 82,
            "fdatasync": 83,
            "sync": 81,
            "syncfs": 267,
            "sync_file_range": 84,
        },
    ),
}
_DENIED = ("add_key", "request_key", "keyctl", "open_by_handle_at")
# Flushing to disk, made a no-op that succeeds (as systemd-nspawn's --suppress-sync does) for
# a throw-away tree: a conversion killed half-way is rebuilt from its cached input anyway, and
# dpkg alone fsyncs every file it unpacks.
_SYNCS = ("fsync", "fdatasync", "sync", "syncfs", "sync_file_range")

Insn = tuple[int, int, int | str, int | str]  # code, k, then where to jump if true / false


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def _assemble(body: list[Insn | str]) -> bytes:
    """Instructions with symbolic jumps: a str in the list names the next instruction; a str
    jump goes there (0 = the next instruction)."""
    labels: dict[str, int] = {}
    insns: list[Insn] = []
    for item in body:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)

    def offset(at: int, target: int | str) -> int:
        return target if isinstance(target, int) else labels[target] - at - 1

    return b"".join(
        _insn(code, k, offset(at, jt), offset(at, jf)) for at, (code, k, jt, jf) in enumerate(insns)
    )


def seccomp_program(machine: str | None = None, *, no_sync: bool = False) -> bytes | None:
    """The filter for this host's architecture, or None where we have no numbers for it.
    With `no_sync`, the calls that flush files to disk succeed without doing anything."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, nr = arch
    body: list[Insn | str] = [
        (_LD_W_ABS, _ARCH, 0, 0),
        (_JEQ_K, audit_arch, 0, "eperm"),  # another ABI (i386): refuse
        (_LD_W_ABS, _NR, 0, 0),
        (_JGE_K, _X32_SYSCALL_BIT, "eperm", 0),  # x32 calls: refuse
        *((_JEQ_K, nr[name], "eperm", 0) for name in _DENIED),
        *((_JEQ_K, nr[name], "pretend", 0) for name in (_SYNCS if no_sync else ())),
        (_JEQ_K, nr["clone3"], "enosys", 0),
        (_JEQ_K, nr["unshare"], "flags", 0),
        (_JEQ_K, nr["clone"], "flags", "allow"),
        "flags",
        (_LD_W_ABS, _ARG0, 0, 0),  # unshare or clone: their flags
        (_JSET_K, _CLONE_NEWUSER, "eperm", "allow"),
        "enosys",
        (_RET_K, _ERRNO | errno.ENOSYS, 0, 0),  # clone3: the C libraries fall back to clone
        "eperm",
        (_RET_K, _ERRNO | errno.EPERM, 0, 0),
        "pretend",
        (_RET_K, _ERRNO | 0, 0, 0),  # "error 0": the call returns 0 without running
        "allow",
        (_RET_K, _ALLOW, 0, 0),
    ]
    return _assemble(body)
