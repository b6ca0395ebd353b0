"""`boot`'s Secure Boot setup mode, kept variable stores and the swtpm TPM: the QEMU command
lines, the variable store's reading, swtpm started and stopped around QEMU, and guest resets
under setup mode (one QEMU for the whole run, panics and firmware refusals still caught).
QEMU is replaced by `printf` (the real boot is in tests/boot/test_boot_disk.py); swtpm is the
real one (`kairos-build install-deps` installs it)."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import pytest

from kairos_build.boot import harness, swtpm
from kairos_build.boot.ovmf_vars import (
    GLOBAL_GUID,
    SECURE_BOOT_ENABLE_GUID,
    STORE_GUID,
    make_variable_store,
    read_variables,
    secure_boot_enforced,
)
from kairos_build.core.errors import BuildError, InputError, MissingToolError

REPORT = (
    "KAIROS-BOOT-REPORT flavor=debian root=ext4 root_mode=ro image=/cOS/active.img "
    "root_image=/run/kairos/state/cOS/active.img verity=none etc=overlay entry=active "
    "firmware=uefi secureboot=disabled tpm=2.0 state=running failed=none"
)


# -- QEMU's command line ------------------------------------------------------------------
def test_setup_mode_is_the_secure_boot_build_with_empty_variables_and_reboots_allowed(tmp_path: Path) -> None:
    assert harness.FIRMWARE_FILES["uefi-secureboot-setup"] == (
        "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    )
    argv = harness.qemu_command(
        tmp_path / "a.raw", "uefi-secureboot-setup", "tcg", tmp_path / "vars.fd", 2048
    )
    assert argv[argv.index("-machine") + 1] == "q35,smm=on"
    assert "driver=cfi.pflash01,property=secure,value=on" in argv
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={harness.OVMF_SECBOOT_CODE}" in argv
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'vars.fd'}" in argv
    # systemd-boot resets the machine after enrolling keys: that must not end QEMU.
    assert "-no-reboot" not in argv
    for firmware in ("bios", "uefi", "uefi-secureboot"):  # unchanged: a reset ends QEMU
        assert "-no-reboot" in harness.qemu_command(
            tmp_path / "a.raw", firmware, "tcg", tmp_path / "vars.fd", 2048
        )


def test_tpm_options_follow_the_firmware_and_a_comma_in_a_path_is_escaped(tmp_path: Path) -> None:
    socket = tmp_path / "swtpm.sock"
    tpm = swtpm.tpm_options(socket)
    assert tpm == [
        "-chardev",
        f"socket,id=chrtpm,path={socket}",
        "-tpmdev",
        "emulator,id=tpm0,chardev=chrtpm",
        "-device",
        "tpm-tis,tpmdev=tpm0",
    ]
    for firmware in harness.FIRMWARES:  # every firmware, SeaBIOS too
        argv = harness.qemu_command(tmp_path / "a.raw", firmware, "tcg", tmp_path / "v.fd", 2048, tpm=tpm)
        at = argv.index("-tpmdev")
        assert argv[at - 2 : at + 4] == tpm
    assert "-tpmdev" not in harness.qemu_command(tmp_path / "a.raw", "uefi", "tcg", tmp_path / "v.fd", 2048)
    assert "path=/x,,y/s" in swtpm.tpm_options(Path("/x,y/s"))[1]
    argv = harness.qemu_command(tmp_path / "a.raw", "uefi", "tcg", Path("/a,b.fd"), 2048)
    assert "if=pflash,format=raw,unit=1,file=/a,,b.fd" in argv
    assert swtpm.swtpm_command(Path("/s"), Path("/t/sock"))[1:] == [
        "socket",
        "--tpm2",
        "--tpmstate",
        "dir=/s",
        "--ctrl",
        "type=unixio,path=/t/sock",
        "--terminate",
    ]


# -- the variable store ---------------------------------------------------------------------
def variable(name: str, vendor: UUID, data: bytes, state: int = 0x3F) -> bytes:
    encoded = (name + "\0").encode("utf-16-le")
    header = struct.pack(
        "<HBBIQ16sIII16s", 0x55AA, state, 0, 7, 0, b"\0" * 16, 0, len(encoded), len(data), vendor.bytes_le
    )
    raw = header + encoded + data
    return raw + b"\xff" * (-len(raw) % 4)


def store(*variables: bytes) -> bytes:
    body = b"".join(variables)
    header = STORE_GUID.bytes_le + struct.pack("<IBB6x", 28 + len(body) + 256, 0x5A, 0xFE)
    return b"\xff" * 0x48 + header + body + b"\xff" * 256


def test_secure_boot_is_enforced_once_a_platform_key_is_enrolled() -> None:
    assert not secure_boot_enforced(store())  # setup mode
    assert read_variables(b"no store here") == {}
    enrolled = store(variable("db", UUID(int=1), b"cert"), variable("PK", GLOBAL_GUID, b"key"))
    assert secure_boot_enforced(enrolled)
    assert read_variables(enrolled)[("db", UUID(int=1))] == b"cert"
    # A deleted PK (state 0x3C) is no key; one replaced keeps its new copy.
    assert not secure_boot_enforced(store(variable("PK", GLOBAL_GUID, b"key", state=0x3C)))
    replaced = store(variable("PK", GLOBAL_GUID, b"old", state=0x3E), variable("PK", GLOBAL_GUID, b"new"))
    assert read_variables(replaced)[("PK", GLOBAL_GUID)] == b"new"
    # OVMF's own switch can keep it off with a PK enrolled.
    off = store(
        variable("PK", GLOBAL_GUID, b"key"), variable("SecureBootEnable", SECURE_BOOT_ENABLE_GUID, b"\0")
    )
    assert not secure_boot_enforced(off)


def test_the_firmware_templates_read_as_setup_mode_and_enforced() -> None:
    empty, microsoft = (
        Path(f) for f in ("/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
    )
    if not (empty.is_file() and microsoft.is_file()):
        pytest.skip("no ovmf package on this host")
    assert not secure_boot_enforced(empty.read_bytes())
    assert secure_boot_enforced(microsoft.read_bytes())
    assert ("KEK", GLOBAL_GUID) in read_variables(microsoft.read_bytes())


def test_a_kept_store_is_made_once_then_used_as_it_is(tmp_path: Path) -> None:
    template = tmp_path / "template.fd"
    template.write_bytes(store().ljust(4096, b"\xff"))
    kept = tmp_path / "node" / "vars.fd"
    assert make_variable_store(kept, str(template)) == kept
    assert kept.read_bytes() == template.read_bytes()
    kept.write_bytes(store(variable("PK", GLOBAL_GUID, b"k")).ljust(4096, b"\xff"))
    make_variable_store(kept, str(template))
    assert secure_boot_enforced(kept.read_bytes())  # not replaced by the template
    kept.write_bytes(b"short")
    with pytest.raises(InputError, match="holds 5 bytes"):
        make_variable_store(kept, str(template))
    with pytest.raises(InputError, match="is not a file"):
        make_variable_store(tmp_path, str(template))


def test_vars_and_expectations_are_refused_before_any_work(tmp_path: Path) -> None:
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * 512)
    with pytest.raises(InputError, match="--vars needs a UEFI firmware"):
        harness.boot(harness.BootSpec(disk, "bios", accel="tcg", vars_file=tmp_path / "v.fd"))
    with pytest.raises(InputError, match="2.0|none|any"):
        harness.boot(harness.BootSpec(disk, "uefi", accel="tcg", expect_tpm="1.3"))
    with pytest.raises(InputError, match="verity|none|any"):
        harness.boot(harness.BootSpec(disk, "uefi", accel="tcg", expect_verity="maybe"))
    assert not (tmp_path / "v.fd").exists()


def test_the_default_secure_boot_expectation_in_setup_mode() -> None:
    assert harness.expected_secureboot("uefi-secureboot-setup", keys_enrolled=False) == "disabled"
    assert harness.expected_secureboot("uefi-secureboot-setup", keys_enrolled=True) == "enabled"
    assert harness.expected_secureboot("uefi-secureboot", keys_enrolled=True) is None


# -- swtpm around QEMU ----------------------------------------------------------------------
def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not alive
        return stat.read().split(") ", 1)[1][0] != "Z"


def test_swtpm_runs_while_the_block_runs_and_is_stopped_even_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "kept-state"
    with pytest.raises(KeyboardInterrupt), swtpm.running_tpm(tmp_path, state) as options:
        socket = Path(options[1].split("path=", 1)[1])
        assert socket.is_socket()
        pids = [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-f", f"path={socket}"], capture_output=True, text=True
            ).stdout.split()
        ]
        assert pids and all(alive(pid) for pid in pids)
        raise KeyboardInterrupt
    assert not any(alive(pid) for pid in pids)
    assert state.is_dir()  # kept for the next run


def test_swtpm_that_fails_to_start_is_named_with_its_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        swtpm, "swtpm_command", lambda state, socket: ["sh", "-c", "echo 'swtpm: no TPM today'; exit 3"]
    )
    with pytest.raises(BuildError, match="exited with code 3.*no TPM today"), swtpm.running_tpm(tmp_path):
        pass
    with pytest.raises(InputError, match="comma"), swtpm.running_tpm(tmp_path, tmp_path / "a,b"):
        pass


def test_a_host_without_swtpm_is_told_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * 512)
    monkeypatch.setenv("PATH", str(tmp_path))  # require_tool also looks in /usr/sbin, /sbin
    with pytest.raises(MissingToolError, match=r"missing host tool 'swtpm' \(package swtpm\)"):
        harness.boot(harness.BootSpec(disk, "uefi", accel="tcg", tpm=True))


def fake_qemu(
    texts: list[str], linger: float = 0
) -> tuple[list[list[str]], Callable[[list[str]], subprocess.Popen[bytes]]]:
    """Stands in for QEMU: each start prints the next text (printf %b), then stays `linger` s."""
    starts: list[list[str]] = []

    def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
        text = texts[min(len(starts), len(texts) - 1)]
        starts.append(argv)
        return subprocess.Popen(
            ["sh", "-c", 'printf "%b\\n" "$1"; exec sleep "$2"', "sh", text, str(linger)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    return starts, spawn


def test_a_tpm_boot_passes_its_options_and_leaves_no_swtpm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * 512)
    starts, spawn = fake_qemu([REPORT])
    monkeypatch.setattr(harness, "_spawn", spawn)
    result = harness.boot(
        harness.BootSpec(
            disk,
            "uefi-secureboot-setup",
            timeout=20,
            accel="tcg",
            tpm_state=tmp_path / "tpm",
            vars_file=tmp_path / "vars.fd",
            expect_tpm="2.0",
        )
    )
    assert (result.tpm, result.verity, result.secureboot) == ("2.0", "none", "disabled")
    argv = starts[0]
    socket = argv[argv.index("-chardev") + 1].split("path=", 1)[1]
    assert "tpm-tis,tpmdev=tpm0" in argv and "-no-reboot" not in argv
    assert subprocess.run(["pgrep", "-f", socket], capture_output=True).returncode == 1
    assert (tmp_path / "tpm").is_dir() and (tmp_path / "vars.fd").is_file()  # both kept
    assert f"file={tmp_path / 'vars.fd'}" in " ".join(argv)
    with pytest.raises(BuildError, match="expected tpm=none, the system reports tpm=2.0"):
        harness.boot(
            harness.BootSpec(disk, "uefi-secureboot-setup", timeout=20, accel="tcg", expect_tpm="none")
        )


def test_keys_in_the_kept_store_make_setup_mode_expect_enforcement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a run that enrolled keys, the same store boots enforced: a report of
    secureboot=disabled then fails unless the caller asks for it."""
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * 512)
    kept = tmp_path / "vars.fd"
    template = Path(harness.OVMF_VARS).read_bytes()
    kept.write_bytes(store(variable("PK", GLOBAL_GUID, b"key")).ljust(len(template), b"\xff"))
    monkeypatch.setattr(harness, "_spawn", fake_qemu([REPORT])[1])
    with pytest.raises(BuildError, match="expected secureboot=enabled"):
        harness.boot(harness.BootSpec(disk, "uefi-secureboot-setup", timeout=20, accel="tcg", vars_file=kept))
    result = harness.boot(
        harness.BootSpec(
            disk,
            "uefi-secureboot-setup",
            timeout=20,
            accel="tcg",
            vars_file=kept,
            expect_secureboot="disabled",
        )
    )
    assert result.secureboot == "disabled"


# -- guest resets under setup mode ----------------------------------------------------------
PANIC_REBOOT = "[ 26.3] Kernel panic - not syncing: Fatal exception\\n[ 26.3] Rebooting in 5 seconds..\\n"
PANIC_HALT = "[ 26.3] Kernel panic - not syncing: Fatal exception\\n---[ end Kernel panic ]---"


def test_a_guest_that_reboots_after_a_panic_goes_on_in_the_same_qemu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * 512)
    starts, spawn = fake_qemu([PANIC_REBOOT + "BdsDxe: starting Boot0001\\n" + REPORT])
    monkeypatch.setattr(harness, "_spawn", spawn)
    result = harness.boot(harness.BootSpec(disk, "uefi-secureboot-setup", timeout=20, accel="tcg"))
    assert len(starts) == 1 and result.state == "running"


def test_a_panic_that_comes_back_after_its_reboot_ends_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * 512)
    starts, spawn = fake_qemu([PANIC_REBOOT + "Linux version 6.12\\n" + PANIC_REBOOT], linger=120)
    monkeypatch.setattr(harness, "_spawn", spawn)
    began = time.monotonic()
    with pytest.raises(BuildError, match="the guest kernel panicked 2 times"):
        harness.boot(harness.BootSpec(disk, "uefi-secureboot-setup", timeout=90, accel="tcg"))
    assert len(starts) == 1  # its reboot was its retry
    assert time.monotonic() - began < 20


def test_a_panic_that_halts_under_setup_mode_gets_one_new_qemu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * 512)
    starts, spawn = fake_qemu([PANIC_HALT, REPORT], linger=120)
    monkeypatch.setattr(harness, "_spawn", spawn)
    result = harness.boot(harness.BootSpec(disk, "uefi-secureboot-setup", timeout=60, accel="tcg"))
    assert len(starts) == 2 and result.state == "running"


def test_a_firmware_refusal_after_a_reboot_is_caught_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel ran, then the guest rebooted and the firmware refused the next boot (keys
    enrolled meanwhile): only the text since the reset is read for the firmware's words."""
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * 512)
    refusal = 'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot(0x0): Access Denied'
    text = "Linux version 6.12\\n[ 30.1] reboot: Restarting system\\n" + refusal
    monkeypatch.setattr(harness, "_spawn", fake_qemu([text], linger=120)[1])
    began = time.monotonic()
    with pytest.raises(BuildError, match="Secure Boot refused the image .*keys were enrolled"):
        harness.boot(harness.BootSpec(disk, "uefi-secureboot-setup", timeout=90, accel="tcg"))
    assert time.monotonic() - began < 20
    assert harness.this_boot(b"a\nLinux version\nreboot: Restarting system\nBdsDxe") == b"BdsDxe"
    assert harness.this_boot(b"firmware text") == b"firmware text"


def test_panics_are_counted_once_even_when_split_between_reads() -> None:
    proc = subprocess.Popen(
        [
            "sh",
            "-c",
            'printf "Kernel pa"; sleep 0.3; printf "nic - not syncing\\nRebooting in 5 s\\n"; '
            'sleep 0.3; printf "Linux version\\nKernel panic - not syncing\\n"; exec sleep 60',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        began = time.monotonic()
        console = harness._read_until(proc, harness.MARKER, began + 30, reboots=True)
    finally:
        harness._stop(proc)
    assert console.panics == 2 and console.match is None
    assert time.monotonic() - began < 10  # the second panic ended the wait
