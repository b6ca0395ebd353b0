"""The sandbox's system-call filter, run by a small classic-BPF interpreter on made-up calls
(the real kernel runs it in tests/integration/test_sandbox.py)."""

from __future__ import annotations

import errno
import struct

import pytest

from kairos_build.core.seccomp import _ARCHES, seccomp_program

ALLOW, ERRNO = 0x7FFF0000, 0x00050000


def run_filter(program: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """What the kernel would decide for one call (the few opcodes the filter uses)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns: list[tuple[int, int, int, int]] = [
        struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)
    ]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x06:
            return k
        elif code in (0x15, 0x35, 0x45):
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("machine", sorted(_ARCHES))
def test_the_filter_refuses_new_user_namespaces_keyrings_and_handles(machine: str) -> None:
    program = seccomp_program(machine)
    assert program is not None
    arch, nr = _ARCHES[machine]
    eperm, enosys = ERRNO | errno.EPERM, ERRNO | errno.ENOSYS
    assert run_filter(program, nr["unshare"], arch, 0x10000000) == eperm  # CLONE_NEWUSER
    assert run_filter(program, nr["unshare"], arch, 0x10020000) == eperm  # ... with NEWNS
    assert run_filter(program, nr["unshare"], arch, 0x00020000) == ALLOW  # NEWNS alone: caps say no
    assert run_filter(program, nr["clone"], arch, 0x10000000 | 17) == eperm
    assert run_filter(program, nr["clone"], arch, 0x01200011) == ALLOW  # fork()
    assert run_filter(program, nr["clone3"], arch) == enosys  # libc falls back to clone
    for name in ("add_key", "request_key", "keyctl", "open_by_handle_at"):
        assert run_filter(program, nr[name], arch) == eperm, name
    for other in (0, 1, 2, 59, 60, 231):  # read, write, open, execve, exit, exit_group ...
        assert run_filter(program, other, arch) == ALLOW
    assert run_filter(program, 0x40000000 | 272, arch) == eperm  # the x32 ABI
    assert run_filter(program, 310, 0x40000003) == eperm  # the i386 ABI


def test_no_filter_for_an_architecture_we_have_no_numbers_for() -> None:
    assert seccomp_program("riscv64") is None


@pytest.mark.parametrize("machine", sorted(_ARCHES))
def test_no_sync_makes_flushes_succeed_without_running_and_keeps_the_rest(machine: str) -> None:
    arch, nr = _ARCHES[machine]
    plain, no_sync = seccomp_program(machine), seccomp_program(machine, no_sync=True)
    assert plain is not None and no_sync is not None
    for name in ("fsync", "fdatasync", "sync", "syncfs", "sync_file_range"):
        assert run_filter(plain, nr[name], arch) == ALLOW, name
        assert run_filter(no_sync, nr[name], arch) == ERRNO | 0, name
    # The refusals stay as they were.
    assert run_filter(no_sync, nr["keyctl"], arch) == ERRNO | errno.EPERM
    assert run_filter(no_sync, nr["unshare"], arch, 0x10000000) == ERRNO | errno.EPERM
    assert run_filter(no_sync, nr["clone3"], arch) == ERRNO | errno.ENOSYS
    assert run_filter(no_sync, 0, arch) == ALLOW
