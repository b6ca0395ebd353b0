"""Boot an artifact under QEMU and prove it reached multi-user with the expected root.

Success is the line the framework's kairos-boot-report unit prints on the serial console once
multi-user.target is reached; the harness checks what that line says about the root. KVM is
used only when a real guest runs under it: on some hosts /dev/kvm opens but guests die with
"KVM internal error" and QEMU then hangs, so every run has a hard timeout and a run that hits
that error is repeated under TCG.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kairos_build import netboot_server
from kairos_build.errors import BuildError, InputError
from kairos_build.log import log
from kairos_build.tools import require_file, require_tool

MARKER = re.compile(rb"KAIROS-BOOT-OK (?P<fields>[^\r\n]*)[\r\n]")  # whole lines only
KVM_FAILURE = b"KVM internal error"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
FIRMWARES = ("bios", "uefi")
EXPECTATIONS = ("live", "immutable", "any")
GUEST_PANIC = b"Kernel panic - not syncing"
# The last line the kernel prints on a panic (after its trace): the guest then only halts.
GUEST_PANIC_END = b"---[ end Kernel panic"

# 16-bit boot sector: use the FPU, write "KVMOK" to COM1, halt. The broken nested KVM seen
# here runs plain real-mode code but dies on the first x87 instruction (as OVMF does), so the
# probe includes one; a guest that still dies later is caught at run time (see `boot`).
_PROBE_CODE = bytes.fromhex(
    "fa 31c0 8ed8 fc"  # cli; xor ax, ax; mov ds, ax; cld
    "9bdbe3"  # finit
    "baf803"  # mov dx, 0x3f8
    "be1a7c"  # mov si, 0x7c1a (the message right after this code)
    "ac 84c0 7403 ee ebf8"  # next: lodsb; test al, al; jz halt; out dx, al; jmp next
    "f4 ebfd"  # halt: hlt; jmp halt
)
_PROBE_SECTOR = (_PROBE_CODE + b"KVMOK\n\0").ljust(510, b"\0") + b"\x55\xaa"
assert len(_PROBE_CODE) == 0x1A


@dataclass(frozen=True)
class BootResult:
    firmware: str
    accel: str
    seconds: float
    fields: dict[str, str]
    log_path: Path


def _read_until(proc: subprocess.Popen[bytes], pattern: re.Pattern[bytes] | bytes,
                deadline: float, log_file: Path | None = None) -> tuple[bytes, re.Match[bytes] | None]:
    """Read the serial console until `pattern` appears, QEMU exits or the deadline passes."""
    assert proc.stdout is not None
    seen = b""
    with open(log_file or os.devnull, "ab") as sink:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                sink.write(chunk)
                sink.flush()
                seen += chunk
                if isinstance(pattern, bytes):
                    if pattern in seen:
                        return seen, None
                elif match := pattern.search(seen):
                    return seen, match
                if KVM_FAILURE in seen or GUEST_PANIC_END in seen:
                    break  # nothing more will come: no need to wait for the deadline
                seen = seen[-1 << 20 :]
            elif proc.poll() is not None:
                break
    return seen, None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """QEMU may hang (the KVM trap): kill its whole process group, hard."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kvm_works(timeout: float = 10.0) -> bool:
    """Start a tiny guest under KVM and see it print; anything else means use TCG."""
    if os.environ.get("KAIROS_BUILD_ACCEL") in ("tcg", "kvm"):
        return os.environ["KAIROS_BUILD_ACCEL"] == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    qemu = require_tool("qemu-system-x86_64")
    with tempfile.TemporaryDirectory(prefix="kairos-kvm-probe-") as tmp:
        disk = Path(tmp) / "probe.img"
        disk.write_bytes(_PROBE_SECTOR)
        proc = _spawn([qemu, "-machine", "pc", "-accel", "kvm", "-m", "64", "-display", "none",
                       "-monitor", "none", "-serial", "stdio", "-no-reboot",
                       "-drive", f"file={disk},format=raw,if=ide"])
        try:
            seen, _ = _read_until(proc, b"KVMOK", time.monotonic() + timeout)
        finally:
            _stop(proc)
    return b"KVMOK" in seen and KVM_FAILURE not in seen


def artifact_drive(artifact: Path, writable: bool = False, as_disk: bool = False) -> list[str]:
    """QEMU drive options; a disk is booted on a throw-away snapshot unless `writable`. An
    ISO goes in as a CD, or with `as_disk` as a USB stick would (a raw disk, no CD)."""
    suffix = artifact.suffix.lower()
    if suffix == ".iso" and as_disk:
        return ["-drive", f"file={artifact},format=raw,if=virtio,snapshot=on"]
    if suffix == ".iso":
        return ["-drive", f"file={artifact},media=cdrom,readonly=on", "-boot", "d"]
    formats = {".qcow2": "qcow2", ".raw": "raw", ".img": "raw"}
    if suffix not in formats:
        raise InputError(f"cannot tell how to boot {artifact.name}",
                         hint="kairos-build boot takes .iso, .raw, .img or .qcow2 files")
    snapshot = "" if writable else ",snapshot=on"
    return ["-drive", f"file={artifact},format={formats[suffix]},if=virtio{snapshot}"]


def netboot_directory(artifact: Path) -> Path | None:
    """The directory a netboot artifact is served from: the directory holding boot.ipxe, given
    as the directory or as the script; None for any other artifact."""
    if artifact.is_dir() and (artifact / netboot_server.SCRIPT).is_file():
        return artifact
    if artifact.name == netboot_server.SCRIPT and artifact.is_file():
        return artifact.parent
    return None


def qemu_command(artifact: Path, firmware: str, accel: str, vars_file: Path, memory: int,
                 writable: bool = False, network: list[str] | None = None,
                 as_disk: bool = False) -> list[str]:
    """`network` (options booting from it, see netboot_server) replaces the artifact's drive."""
    argv = [require_tool("qemu-system-x86_64"), "-machine", "q35", "-m", str(memory),
            "-smp", "2", "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-no-reboot", *(network or ["-nic", "none"])]
    argv += ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else \
        ["-accel", "tcg,thread=multi", "-cpu", "max"]
    if firmware == "uefi":
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}"]
    return argv + ([] if network else artifact_drive(artifact, writable, as_disk))


def _parse_fields(text: bytes) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.decode(errors="replace").split() if "=" in item)
    return {key: value for key, value in pairs}


def check_root(fields: dict[str, str], expect_root: str) -> str | None:
    """Why the reported root is not the expected one, or None when it is."""
    if expect_root == "live" and fields.get("live") != "squashfs":
        return f"expected the live squashfs root, the system reports live={fields.get('live')}"
    if expect_root == "immutable":
        if fields.get("root_mode") != "ro" or fields.get("image", "none") == "none":
            return ("expected / mounted read-only from a system image, the system reports "
                    f"root_mode={fields.get('root_mode')} image={fields.get('image')}")
        if fields.get("etc") != "overlay":
            return f"expected a writable overlay on /etc, the system reports etc={fields.get('etc')}"
    return None


def default_expectation(artifact: Path) -> str:
    """ISOs and netboot boot the live squashfs; disks boot an image read-only with overlays."""
    live = artifact.suffix.lower() == ".iso" or netboot_directory(artifact) is not None
    return "live" if live else "immutable"


@contextlib.contextmanager
def _served(netboot: Path | None, access_log: Path) -> Iterator[list[str] | None]:
    """For a netboot directory: serve it over HTTP while QEMU runs; its network options."""
    if netboot is None:
        yield None
        return
    with netboot_server.serve(netboot, access_log) as port:
        yield netboot_server.qemu_network(port)


def boot(artifact: Path, firmware: str = "bios", timeout: float = 600, memory: int = 2048,
         expect_root: str | None = None, log_dir: Path | None = None,
         accel: str | None = None, writable: bool = False, as_disk: bool = False,
         retried: bool = False) -> BootResult:
    """Boot `artifact`; return when the boot marker arrives, raise BuildError otherwise.

    `accel` (kvm or tcg) skips the KVM probe. `writable` lets the guest change a disk
    artifact (to test persistence across boots); by default it runs on a snapshot.
    """
    if firmware not in FIRMWARES:
        raise InputError(f"--firmware {firmware!r} is not known", hint="use bios or uefi")
    netboot = netboot_directory(artifact)
    if not artifact.is_file() and netboot is None:
        raise InputError(f"{artifact} {'has no boot.ipxe' if artifact.is_dir() else 'does not exist'}",
                         hint="boot takes a file, or a netboot directory holding boot.ipxe")
    artifact = netboot or artifact  # boot.ipxe stands for its directory; logs go beside it
    if firmware == "uefi":
        require_file(OVMF_CODE)
    expect_root = expect_root or default_expectation(artifact)
    if expect_root not in EXPECTATIONS:
        raise InputError(f"--expect-root {expect_root!r} is not known", hint=f"use {'|'.join(EXPECTATIONS)}")
    accel = accel or ("kvm" if kvm_works() else "tcg")
    log.info("booting %s under %s firmware with %s%s", artifact.name, firmware, accel,
             "" if accel == "kvm" else " (KVM unusable here)")
    log_dir = log_dir or artifact.parent
    log_path = log_dir / f"{artifact.name}.{firmware}{'.disk' if as_disk else ''}.boot.log"
    with tempfile.TemporaryDirectory(prefix="kairos-boot-") as tmp:
        vars_file = Path(tmp) / "OVMF_VARS.fd"
        if firmware == "uefi":
            shutil.copyfile(OVMF_VARS, vars_file)
        log_path.write_bytes(b"")
        with _served(netboot, log_dir / f"{artifact.name}.{firmware}.http.log") as network:
            start = time.monotonic()
            proc = _spawn(qemu_command(artifact, firmware, accel, vars_file, memory, writable,
                                       network, as_disk))
            try:
                seen, match = _read_until(proc, MARKER, start + timeout, log_path)
            finally:
                _stop(proc)
    elapsed = time.monotonic() - start
    if accel == "kvm" and KVM_FAILURE in seen:
        log.info("KVM failed inside the guest; booting again with TCG")
        return boot(artifact, firmware, timeout, memory, expect_root, log_dir, accel="tcg",
                    writable=writable, as_disk=as_disk)
    if match is None and accel == "tcg" and GUEST_PANIC in seen and not retried:
        # Seen here once in ~40 TCG boots: the guest kernel dies on an int3 while patching its
        # own code under multi-threaded TCG, and the same disk boots fine again. One retry;
        # a panic that comes back is reported.
        kept = log_path.with_name(log_path.name + ".panic")
        log_path.replace(kept)
        log.warning("the guest kernel panicked under TCG; booting once more (log: %s)", kept)
        return boot(artifact, firmware, timeout, memory, expect_root, log_dir, accel="tcg",
                    writable=writable, as_disk=as_disk, retried=True)
    tail = "\n".join(seen.decode(errors="replace").splitlines()[-30:])
    if match is None:
        why = "QEMU exited" if proc.returncode not in (None, -signal.SIGKILL) else \
            f"no boot marker within {timeout:.0f} s"
        raise BuildError(f"boot of {artifact.name} ({firmware}, {accel}) failed: {why}; "
                         f"last console lines:\n{tail}\n(full log: {log_path})")
    fields = _parse_fields(match.group("fields"))
    if problem := check_root(fields, expect_root):
        raise BuildError(f"boot of {artifact.name} ({firmware}) reached multi-user but {problem}")
    return BootResult(firmware, accel, elapsed, fields, log_path)
