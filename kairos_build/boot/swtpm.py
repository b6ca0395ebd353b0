"""A TPM 2.0 for the guest: swtpm, QEMU's TPM emulator, running beside QEMU.

QEMU does not emulate the TPM itself: it talks to swtpm over a control socket (`-tpmdev
emulator`) and shows the guest a TIS device (`tpm-tis`, what PCs have; OVMF measures the boot
into it, Linux's tpm_tis drives it). swtpm keeps the TPM's persistent state (its seeds, NV
indexes: what sealed data needs to unlock) in a directory, kept across runs when the caller
gives one.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from kairos_build.core.errors import BuildError, InputError
from kairos_build.core.log import log
from kairos_build.core.tools import dies_with_us, require_tool

SOCKET_WAIT = 10.0  # seconds for swtpm to open its socket (it takes milliseconds)


def swtpm_command(state_dir: Path, socket: Path) -> list[str]:
    """swtpm serving a TPM 2.0 on the control socket `socket`, its state in `state_dir`.
    `--terminate`: it ends when QEMU closes the connection, even if we cannot stop it."""
    return [
        require_tool("swtpm"),
        "socket",
        "--tpm2",
        "--tpmstate",
        f"dir={state_dir}",
        "--ctrl",
        f"type=unixio,path={socket}",
        "--terminate",
    ]


def tpm_options(socket: Path) -> list[str]:
    """QEMU options: a TPM TIS device backed by the swtpm listening on `socket`."""
    path = str(socket).replace(",", ",,")  # QEMU option values escape a comma by doubling it
    return [
        "-chardev",
        f"socket,id=chrtpm,path={path}",
        "-tpmdev",
        "emulator,id=tpm0,chardev=chrtpm",
        "-device",
        "tpm-tis,tpmdev=tpm0",
    ]


def _check_state_dir(state_dir: Path) -> Path:
    # swtpm splits its option values on commas: a path with one cannot be given to it.
    if "," in str(state_dir):
        raise InputError(
            f"--tpm-state {state_dir}: swtpm cannot take a path with a comma", hint="choose another directory"
        )
    if state_dir.exists() and not state_dir.is_dir():
        raise InputError(
            f"--tpm-state {state_dir} is not a directory", hint="give a directory (made when missing)"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    return state_dir.resolve()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_tpm(workdir: Path, state_dir: Path | None = None) -> Iterator[list[str]]:
    """Start swtpm before QEMU and yield QEMU's TPM options; swtpm is stopped when the block
    ends, however it ends (an error, Ctrl-C). Its socket and log are made in `workdir`; its
    state goes to `state_dir` (made when missing, kept), else into `workdir`."""
    state = _check_state_dir(state_dir) if state_dir else workdir / "tpm-state"
    state.mkdir(exist_ok=True)
    socket = workdir / "swtpm.sock"
    output = workdir / "swtpm.log"
    argv = swtpm_command(state, socket)
    with output.open("wb") as sink:
        # Dies with us too (setpriv): a killed `boot` leaves no swtpm behind.
        proc = subprocess.Popen(
            dies_with_us(argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + SOCKET_WAIT
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                said = output.read_text(errors="replace").strip() or "nothing"
                how = (
                    f"it exited with code {proc.returncode}"
                    if proc.poll() is not None
                    else f"not within {SOCKET_WAIT:.0f} s"
                )
                raise BuildError(f"swtpm did not open its socket ({how}); it said: {said}")
            time.sleep(0.05)
        log.info("TPM 2.0: swtpm with its state in %s", state)
        yield tpm_options(socket)
    finally:
        _stop(proc)
