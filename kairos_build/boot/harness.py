"""Boot an artifact under QEMU and prove it reached a healthy multi-user with the expected root.

Success is the line the framework's kairos-boot-report unit prints on the serial console once
the system has settled after multi-user.target (`systemctl is-system-running --wait`, bounded
in the guest); the harness checks what that line says: systemd's state must be `running` with
no failed unit, and the root, the firmware, Secure Boot and the boot entry must be the expected
ones. A firmware that refuses the image (Secure Boot) or finds nothing to boot ends the wait at
once. KVM is used only when a real guest runs under it: on some hosts /dev/kvm opens but guests
die with "KVM internal error" and QEMU then hangs, so every run has a hard timeout and a run that
hits that error is repeated under TCG.
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

from kairos_build.boot import netboot_server
from kairos_build.errors import BuildError, InputError, MissingToolError
from kairos_build.log import log
from kairos_build.tools import dies_with_us, require_tool

MARKER = re.compile(rb"KAIROS-BOOT-REPORT (?P<fields>[^\r\n]*)[\r\n]")  # whole lines only
KVM_FAILURE = b"KVM internal error"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
# OVMF's Secure Boot build (SMM) and variables with Microsoft's keys enrolled, Secure Boot on.
OVMF_SECBOOT_CODE = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_SECBOOT_VARS = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
FIRMWARE_FILES = {"bios": (), "uefi": (OVMF_CODE, OVMF_VARS),
                  "uefi-secureboot": (OVMF_SECBOOT_CODE, OVMF_SECBOOT_VARS)}
FIRMWARES = tuple(FIRMWARE_FILES)
EXPECTATIONS = ("live", "immutable", "any")
SECUREBOOT_STATES = ("enabled", "disabled", "unsupported", "any")
NICS = ("none", "user")
# What each firmware makes the guest see (the report's firmware= and secureboot=).
GUEST_FIRMWARE = {"bios": ("bios", "unsupported"), "uefi": ("uefi", "disabled"),
                  "uefi-secureboot": ("uefi", "enabled")}
# Console text of a firmware that will not boot what it was given. OVMF: "BdsDxe: failed to
# load Boot0001 ... : Access Denied" for an image Secure Boot refuses; shim says "Security
# Violation"; grub under shim "bad shim signature" for an unsigned kernel. Then OVMF gives up
# ("No bootable option or device was found") or drops to its shell. QEMU's iPXE says "Could
# not boot image" when the firmware refuses the kernel it downloaded (under Secure Boot:
# "Exec format error"). Only read before the kernel starts. (SeaBIOS writes its "No bootable
# device." to the screen only: a BIOS guest with nothing to boot runs into the deadline.)
SECUREBOOT_REFUSED = (b": Access Denied", b"Security Violation", b"bad shim signature")
IPXE_FAILED = (b"Could not boot image",)
# grub's last words when every entry it tried failed (it then shows its menu again and waits).
GRUB_FAILED = (b"Failed to boot both default and fallback entries",)
NOTHING_TO_BOOT = (b"No bootable option or device was found", b"UEFI Interactive Shell")
KERNEL_STARTED = b"Linux version "
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
    state: str = "unknown"
    failed: tuple[str, ...] = ()
    secureboot: str = "unknown"
    entry: str = "none"


def firmware_gave_up(seen: bytes) -> bytes | None:
    """The firmware's words when it refused the image or found nothing to boot, else None.
    Only the text before the kernel started counts."""
    before_kernel = seen.split(KERNEL_STARTED, 1)[0]
    for words in (*SECUREBOOT_REFUSED, *IPXE_FAILED, *GRUB_FAILED, *NOTHING_TO_BOOT):
        if words in before_kernel:
            return words
    return None


def _line_with(seen: bytes, words: bytes) -> str:
    """The console line holding `words`, without terminal escapes."""
    start = seen.find(words)
    begin = max(seen.rfind(b"\n", 0, start), seen.rfind(b"\r", 0, start)) + 1
    ends = [i for i in (seen.find(b"\n", start), seen.find(b"\r", start)) if i >= 0]
    line = seen[begin:min(ends) if ends else len(seen)].decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;=?]*[A-Za-z]", "", line).strip()


def _read_until(proc: subprocess.Popen[bytes], pattern: re.Pattern[bytes] | bytes,
                deadline: float, log_file: Path | None = None,
                firmware_watch: bool = False) -> tuple[bytes, re.Match[bytes] | None]:
    """Read the serial console until `pattern` appears, QEMU exits or the deadline passes;
    with `firmware_watch`, also until the firmware gives up (see firmware_gave_up)."""
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
                if firmware_watch and KERNEL_STARTED not in seen and firmware_gave_up(seen):
                    # Let the firmware finish its sentence (the rest of the line) for the log.
                    with contextlib.suppress(OSError):
                        if select.select([proc.stdout], [], [], 1.0)[0]:
                            rest = os.read(proc.stdout.fileno(), 65536)
                            sink.write(rest)
                            seen += rest
                    break
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
    # QEMU dies with us: a killed `boot` must not leave a guest running with no end.
    return subprocess.Popen(dies_with_us(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
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


def nic_options(nic: str) -> list[str]:
    """QEMU options for the guest's network card: none, or a virtio NIC on QEMU's user-mode
    network in restricted mode (DHCP answers, nothing reachable outside the guest)."""
    if nic not in NICS:
        raise InputError(f"--nic {nic!r} is not known", hint=f"use {'|'.join(NICS)}")
    return ["-nic", "none"] if nic == "none" else \
        ["-nic", "user,model=virtio-net-pci,restrict=on"]


def qemu_command(artifact: Path, firmware: str, accel: str, vars_file: Path, memory: int,
                 writable: bool = False, network: list[str] | None = None,
                 as_disk: bool = False, nic: str = "none") -> list[str]:
    """`network` (options booting from it, see netboot_server) replaces the artifact's drive
    and the NIC."""
    secure = firmware == "uefi-secureboot"
    argv = [require_tool("qemu-system-x86_64"), "-machine", "q35,smm=on" if secure else "q35",
            "-m", str(memory), "-smp", "2", "-display", "none", "-monitor", "none",
            "-serial", "stdio", "-no-reboot", *(network or nic_options(nic))]
    argv += ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else \
        ["-accel", "tcg,thread=multi", "-cpu", "max"]
    if firmware in ("uefi", "uefi-secureboot"):
        code = OVMF_SECBOOT_CODE if secure else OVMF_CODE
        if secure:  # the variable store is only writable from SMM: no bypass from the OS
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}"]
    return argv + ([] if network else artifact_drive(artifact, writable, as_disk))


def _parse_fields(text: bytes) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.decode(errors="replace").split() if "=" in item)
    return {key: value for key, value in pairs}


def parse_report(line: bytes) -> dict[str, str] | None:
    """The fields of the boot report in console text (the last whole report line), or None."""
    matches = list(MARKER.finditer(line if line.endswith((b"\n", b"\r")) else line + b"\n"))
    return _parse_fields(matches[-1].group("fields")) if matches else None


def _listed(value: str | None) -> tuple[str, ...]:
    """A report list (comma-separated, `none` for empty)."""
    return () if value in (None, "", "none") else tuple(value.split(","))


def check_health(fields: dict[str, str]) -> str | None:
    """Why the reported system is not healthy, or None: healthy is state=running, failed=none."""
    state = fields.get("state")
    failed = _listed(fields.get("failed"))
    if state is None or "failed" not in fields:
        return ("the boot report says nothing of systemd's state (state=, failed=): "
                "an image built before the health report?")
    if state == "running" and not failed:
        return None
    problems = [f"the system is {state}"]
    if failed:
        problems.append(f"failed units: {', '.join(failed)}")
    if state in ("initializing", "starting"):
        jobs = _listed(fields.get("jobs"))
        problems.append("it never settled; jobs still waiting: "
                        + (", ".join(jobs) if jobs else "none listed"))
    return "; ".join(problems)


def check_platform(fields: dict[str, str], firmware: str, expect_secureboot: str | None = None,
                   expect_entry: str | None = None) -> str | None:
    """Why the firmware, Secure Boot state or boot entry the guest reports is not the expected
    one, or None. Secure Boot is expected as the firmware sets it unless `expect_secureboot`."""
    guest_firmware, default_secureboot = GUEST_FIRMWARE[firmware]
    if fields.get("firmware") != guest_firmware:
        return f"expected a {guest_firmware} boot, the system reports firmware={fields.get('firmware')}"
    expected = expect_secureboot or default_secureboot
    if expected != "any" and fields.get("secureboot") != expected:
        return f"expected secureboot={expected}, the system reports secureboot={fields.get('secureboot')}"
    if expect_entry is not None and fields.get("entry") != expect_entry:
        return f"expected boot entry {expect_entry}, the system reports entry={fields.get('entry')}"
    return None


def require_firmware(firmware: str) -> None:
    """Stop, naming the package, when the host lacks the firmware files."""
    for path in FIRMWARE_FILES[firmware]:
        if not Path(path).is_file():
            raise MissingToolError(f"missing host file {path} (package ovmf), needed for "
                                   f"--firmware {firmware}",
                                   hint="run 'kairos-build install-deps' or 'apt-get install ovmf'")


def refusal_message(words: bytes, firmware: str, netboot: bool, seen: bytes = b"") -> str:
    """What to tell the user when the firmware gave up with `words` on the console `seen`."""
    said = _line_with(seen, words) if words in seen else words.decode().strip(": ")
    if firmware == "uefi-secureboot" and netboot:
        return (f"Secure Boot refused the network boot (console: \"{said}\"): QEMU's iPXE "
                "loads the kernel from boot.ipxe through the firmware, which runs only images "
                "signed by a key it trusts (Microsoft's UEFI CA, i.e. shim); netboot under "
                "Secure Boot needs shim and a signed grub served instead of boot.ipxe")
    if words in GRUB_FAILED:
        errors = list(dict.fromkeys(line.strip() for line in seen.decode(errors="replace").splitlines()
                                    if line.strip().startswith("error: ")))
        return (f"grub could not start the system (console: \"{said}\"; "
                f"{'; '.join(errors) or 'no error line'})")
    if firmware == "uefi-secureboot" and words not in IPXE_FAILED:
        return (f"Secure Boot refused the image (console: \"{said}\"): its EFI boot loader is "
                "not signed by a key the firmware trusts (Microsoft's UEFI CA, i.e. shim)")
    if words in IPXE_FAILED:
        return f"iPXE could not boot the kernel (console: \"{said}\")"
    return f"the firmware found nothing to boot (console: \"{said}\")"


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
         retried: bool = False, nic: str = "none", expect_secureboot: str | None = None,
         expect_entry: str | None = None) -> BootResult:
    """Boot `artifact`; return when the boot report shows a healthy system, raise BuildError
    otherwise.

    `accel` (kvm or tcg) skips the KVM probe. `writable` lets the guest change a disk
    artifact (to test persistence across boots); by default it runs on a snapshot. `nic` is
    the guest's network card (none, or user: QEMU's restricted user-mode network); a netboot
    always has one. `expect_secureboot` (enabled|disabled|unsupported|any) defaults to what
    the firmware gives; `expect_entry` is the kairos.entry= the booted entry must name.
    """
    if firmware not in FIRMWARES:
        raise InputError(f"--firmware {firmware!r} is not known", hint=f"use {'|'.join(FIRMWARES)}")
    if expect_secureboot is not None and expect_secureboot not in SECUREBOOT_STATES:
        raise InputError(f"--expect-secureboot {expect_secureboot!r} is not known",
                         hint=f"use {'|'.join(SECUREBOOT_STATES)}")
    nic_options(nic)  # checks the value before any work
    netboot = netboot_directory(artifact)
    if not artifact.is_file() and netboot is None:
        raise InputError(f"{artifact} {'has no boot.ipxe' if artifact.is_dir() else 'does not exist'}",
                         hint="boot takes a file, or a netboot directory holding boot.ipxe")
    artifact = netboot or artifact  # boot.ipxe stands for its directory; logs go beside it
    require_firmware(firmware)
    expect_root = expect_root or default_expectation(artifact)
    if expect_root not in EXPECTATIONS:
        raise InputError(f"--expect-root {expect_root!r} is not known", hint=f"use {'|'.join(EXPECTATIONS)}")
    accel = accel or ("kvm" if kvm_works() else "tcg")
    log.info("booting %s under %s firmware with %s%s", artifact.name, firmware, accel,
             "" if accel == "kvm" else " (KVM unusable here)")
    log_dir = log_dir or artifact.parent
    log_path = log_dir / f"{artifact.name}.{firmware}{'.disk' if as_disk else ''}.boot.log"

    def again(retry: bool) -> BootResult:
        return boot(artifact, firmware, timeout, memory, expect_root, log_dir, accel="tcg",
                    writable=writable, as_disk=as_disk, retried=retry, nic=nic,
                    expect_secureboot=expect_secureboot, expect_entry=expect_entry)

    with tempfile.TemporaryDirectory(prefix="kairos-boot-") as tmp:
        vars_file = Path(tmp) / "OVMF_VARS.fd"
        if FIRMWARE_FILES[firmware]:
            shutil.copyfile(FIRMWARE_FILES[firmware][1], vars_file)
        log_path.write_bytes(b"")
        with _served(netboot, log_dir / f"{artifact.name}.{firmware}.http.log") as network:
            start = time.monotonic()
            proc = _spawn(qemu_command(artifact, firmware, accel, vars_file, memory, writable,
                                       network, as_disk, nic))
            try:
                seen, match = _read_until(proc, MARKER, start + timeout, log_path,
                                          firmware_watch=True)
            finally:
                _stop(proc)
    elapsed = time.monotonic() - start
    if accel == "kvm" and KVM_FAILURE in seen:
        log.info("KVM failed inside the guest; booting again with TCG")
        return again(retry=retried)
    if match is None and accel == "tcg" and GUEST_PANIC in seen and not retried:
        # Seen here once in ~40 TCG boots: the guest kernel dies on an int3 while patching its
        # own code under multi-threaded TCG, and the same disk boots fine again. One retry;
        # a panic that comes back is reported.
        kept = log_path.with_name(log_path.name + ".panic")
        log_path.replace(kept)
        log.warning("the guest kernel panicked under TCG; booting once more (log: %s)", kept)
        return again(retry=True)
    tail = "\n".join(seen.decode(errors="replace").splitlines()[-30:])
    if match is None:
        gave_up = firmware_gave_up(seen) if KERNEL_STARTED not in seen else None
        if gave_up is not None:
            why = refusal_message(gave_up, firmware, netboot is not None, seen)
        elif proc.returncode not in (None, -signal.SIGKILL):
            why = "QEMU exited"
        else:
            why = f"no boot report within {timeout:.0f} s"
        raise BuildError(f"boot of {artifact.name} ({firmware}, {accel}) failed after "
                         f"{elapsed:.0f} s: {why}; last console lines:\n{tail}\n(full log: {log_path})")
    fields = _parse_fields(match.group("fields"))
    where = f"boot of {artifact.name} ({firmware}, {elapsed:.0f} s)"
    if problem := check_root(fields, expect_root):
        raise BuildError(f"{where} reached multi-user but {problem} (full log: {log_path})")
    if problem := check_health(fields):
        raise BuildError(f"{where} reached multi-user but it is not healthy: {problem} "
                         f"(their status is on the console, KAIROS-FAILED-UNIT lines; "
                         f"full log: {log_path})")
    if problem := check_platform(fields, firmware, expect_secureboot, expect_entry):
        raise BuildError(f"{where} is healthy but {problem} (full log: {log_path})")
    return BootResult(firmware, accel, elapsed, fields, log_path, state=fields["state"],
                      failed=_listed(fields.get("failed")),
                      secureboot=fields.get("secureboot", "unknown"),
                      entry=fields.get("entry", "none"))
