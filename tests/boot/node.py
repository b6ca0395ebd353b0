"""A Kairos node under QEMU for lifecycle tests: several drives, reboots allowed (a node
reboots after an upgrade), the serial console read as it comes and typed into (root logs in
and runs commands), the machine killed at will (a power cut).

Health is judged by the same code as `kairos-build boot`: the boot report line, then
harness.check_health (running, no failed unit).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kairos_build.boot import harness, swtpm
from kairos_build.boot.retries import note_retry
from kairos_build.core.tools import dies_with_us

PROMPT = "KAIROS-SHELL# "


@functools.cache
def kvm_works() -> bool:
    """Probed once per session: the probe may wait its whole timeout on a broken /dev/kvm."""
    return harness.kvm_works()


_RC = re.compile(rb"KAIROS-RC=(\d+)")
# The guest kernel's last words before a reboot, and the first of the next kernel.
_RESTART, _KERNEL = b"reboot: machine restart", b"Linux version"
# Under TCG, OVMF now and then stops for good right after a guest restart: before its first
# output, or while it loads the boot entry, spinning a core (seen at about one restart in
# ten in the Trusted Boot flow, with swtpm idle). A loaded machine gets from the restart to
# the next kernel in well under a minute, so this much silence there is a hung firmware.
FIRMWARE_HANG = 240.0


class GuestError(AssertionError):
    pass


class Node:
    """One QEMU machine. `cdrom` and `disks` (qcow2 or raw files, written in place)."""

    def __init__(
        self,
        log_path: Path,
        disks: list[Path],
        cdrom: Path | None = None,
        firmware: str = "bios",
        memory: int = 2048,
        vars_file: Path | None = None,
        extra_drives: Sequence[Path] = (),
        tpm_state: Path | None = None,
    ) -> None:
        self.log_path = log_path
        self.seen = b""
        self.offset = 0  # what earlier waits consumed
        self._tmp = tempfile.TemporaryDirectory(prefix="kairos-node-")
        firmware_files = harness.FIRMWARE_FILES[firmware]
        if firmware_files and vars_file is None:
            vars_file = Path(self._tmp.name) / "OVMF_VARS.fd"
            shutil.copyfile(firmware_files[1], vars_file)
        first = cdrom or disks[0]
        accel = "kvm" if kvm_works() else "tcg"
        # A TPM (swtpm) whose state is kept in `tpm_state`, for sealed data across runs.
        self._stack = contextlib.ExitStack()
        self._tpm_state = tpm_state
        tpm = (
            self._stack.enter_context(swtpm.running_tpm(Path(self._tmp.name), tpm_state))
            if tpm_state is not None
            else None
        )
        argv = harness.qemu_command(
            first, firmware, accel, vars_file or Path("/dev/null"), memory, writable=True, tpm=tpm
        )
        if "-no-reboot" in argv:  # absent under a firmware that reboots anyway (setup mode)
            argv.remove("-no-reboot")
        for disk in disks if cdrom else disks[1:]:
            argv += harness.artifact_drive(disk, writable=True)
        for drive in extra_drives:
            argv += ["-drive", f"file={drive},format=raw,if=virtio,readonly=on"]
        if cdrom:  # the CD first while the disk is empty; afterwards the firmware skips it
            argv = [word for word in argv if word not in ("-boot", "d")] + ["-boot", "order=cd"]
        self.started = time.monotonic()
        log_path.write_bytes(b"")
        self._argv = argv
        self.power_cycles = 0
        self.proc = self._start_qemu()

    def _start_qemu(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            dies_with_us(self._argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def power_cycle(self, why: str) -> None:
        """Off and on again: QEMU (and swtpm, which ends with it) started anew on the same
        disks, variable store and TPM state, as a hand on the power button would."""
        self.kill()
        self._stack.close()
        self._stack = contextlib.ExitStack()
        if self._tpm_state is not None:
            (Path(self._tmp.name) / "swtpm.sock").unlink(missing_ok=True)
            self._stack.enter_context(swtpm.running_tpm(Path(self._tmp.name), self._tpm_state))
        note = f"\nKAIROS-TEST: {why}: power-cycled the machine\n".encode()
        with self.log_path.open("ab") as sink:
            sink.write(note)
        self.seen += note
        self.power_cycles += 1
        logging.getLogger("kairos-build").warning("%s: %s: power-cycled the machine", self.log_path, why)
        note_retry("firmware-power-cycle", f"{self.log_path.name}: {why}")
        self.proc = self._start_qemu()

    def _firmware_hung(self, quiet: float) -> bool:
        """Silent this long since the guest restarted, and no kernel since."""
        if quiet < FIRMWARE_HANG or self.power_cycles >= 3:
            return False
        restart = self.seen.rfind(_RESTART)
        return restart >= 0 and self.seen.find(_KERNEL, restart) < 0

    # -- console ------------------------------------------------------------------------
    def _pump(self, wait: float) -> bool:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        if not ready:
            return self.proc.poll() is None
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            return False
        with self.log_path.open("ab") as sink:
            sink.write(chunk)
        self.seen += chunk
        return True

    def wait_for(self, pattern: bytes | re.Pattern[bytes], timeout: float) -> re.Match[bytes]:
        """The first match after what earlier waits consumed; GuestError on timeout or exit,
        or at once when the guest kernel panicked and stays down (no panic= reboot)."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while True:
            found = regex.search(self.seen, self.offset)
            if found:
                self.offset = found.end()
                return found
            panic = self.seen.rfind(harness.GUEST_PANIC_END, self.offset)
            if (
                panic >= 0
                and self.seen.find(b"Rebooting in", panic) < 0
                and time.monotonic() - quiet_since > 20
            ):
                raise GuestError(
                    f"the guest kernel panicked and did not reboot; last lines:\n"
                    f"{self.tail()}\n(log: {self.log_path})"
                )
            if time.monotonic() > deadline:
                raise GuestError(
                    f"no {regex.pattern!r} within {timeout:.0f} s; last lines:\n"
                    f"{self.tail()}\n(log: {self.log_path})"
                )
            if self._firmware_hung(time.monotonic() - quiet_since):
                self.power_cycle(
                    f"no output for {FIRMWARE_HANG:.0f} s after the guest restarted (the firmware hung)"
                )
                quiet_since = time.monotonic()
                continue
            before = len(self.seen)
            if not self._pump(0.5) and self.proc.poll() is not None:
                while self._pump(0.1):
                    pass
                found = regex.search(self.seen, self.offset)
                if found:
                    self.offset = found.end()
                    return found
                raise GuestError(
                    f"QEMU exited before {regex.pattern!r}; last lines:\n"
                    f"{self.tail()}\n(log: {self.log_path})"
                )
            if len(self.seen) != before:
                quiet_since = time.monotonic()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.seen.decode(errors="replace").splitlines()[-lines:])

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        for line in text.splitlines(keepends=True):
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
            time.sleep(0.2)

    # -- boots --------------------------------------------------------------------------
    def report(self, timeout: float = 600, healthy: bool = True) -> dict[str, str]:
        """The next boot report's fields; with `healthy`, a boot that is not fails here."""
        found = self.wait_for(harness.MARKER, timeout)
        fields = harness.parse_report(found.group(0)) or {}
        if healthy and (problem := harness.check_health(fields)):
            raise GuestError(f"boot not healthy: {problem}; log: {self.log_path}")
        return fields

    def login(self, user: str = "root", password: str = "kairos", timeout: float = 120) -> None:
        self.type("\n")
        self.wait_for(b"login: ", timeout)
        self.type(f"{user}\n")
        self.wait_for(b"Password: ", 30)
        self.type(f"{password}\n")
        self.type(f"PS1='{PROMPT}'; export PS1; stty -echo\n")
        self.wait_for(PROMPT.encode(), 60)

    def run(self, command: str, timeout: float = 600) -> tuple[int, str]:
        """Run a shell command as the logged-in user; (exit status, output)."""
        start = self.offset
        self.type(f"{command}; echo KAIROS-RC=$?\n")
        found = self.wait_for(_RC, timeout)
        output = self.seen[start : found.start()].decode(errors="replace")
        return int(found.group(1)), output

    def wait_exit(self, timeout: float) -> int:
        """QEMU's exit (the guest powered off); GuestError when it keeps running."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._pump(0.5)
        if self.proc.poll() is None:
            raise GuestError(
                f"the guest did not power off within {timeout:.0f} s; last lines:\n"
                f"{self.tail()}\n(log: {self.log_path})"
            )
        while self._pump(0.1):
            pass
        return self.proc.returncode

    def kill(self) -> None:
        """Power cut: QEMU killed, nothing flushed."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self._stack.close()
        self._tmp.cleanup()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
