"""The boot harness retries once when the guest kernel panics under TCG, and only once."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kairos_build.boot import harness as boot_module
from kairos_build.core.errors import BuildError

MARKER = (
    "KAIROS-BOOT-REPORT flavor=debian root=ext4 root_mode=ro image=/cOS/active.img "
    "root_image=/run/kairos/state/cOS/active.img verity=none etc=overlay "
    "entry=active firmware=bios secureboot=unsupported state=running failed=none"
)


def fake_guest(outputs: list[str]) -> tuple[list[int], Callable[[list[str]], subprocess.Popen[bytes]]]:
    """Replaces QEMU: each start prints the next console text and exits."""
    starts: list[int] = []

    def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
        text = outputs[min(len(starts), len(outputs) - 1)]
        starts.append(1)
        return subprocess.Popen(["printf", "%s\\n", text], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    return starts, spawn


def test_one_panic_under_tcg_is_booted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "node.raw"
    disk.write_bytes(b"\0" * 512)
    starts, spawn = fake_guest(["[ 26.3] Kernel panic - not syncing: Fatal exception", MARKER])
    monkeypatch.setattr(boot_module, "_spawn", spawn)
    result = boot_module.boot(boot_module.BootSpec(disk, "bios", timeout=20, accel="tcg"))
    assert len(starts) == 2 and result.fields["root_mode"] == "ro"
    assert (tmp_path / "node.raw.bios.boot.log.panic").read_text().startswith("[ 26.3] Kernel panic")


def test_a_panic_that_comes_back_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "node.raw"
    disk.write_bytes(b"\0" * 512)
    starts, spawn = fake_guest(["Kernel panic - not syncing: VFS: Unable to mount root fs"])
    monkeypatch.setattr(boot_module, "_spawn", spawn)
    with pytest.raises(BuildError, match="Unable to mount root fs"):
        boot_module.boot(boot_module.BootSpec(disk, "bios", timeout=20, accel="tcg"))
    assert len(starts) == 2


def test_a_panicked_guest_is_not_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A panicked kernel halts without QEMU exiting: its last line ends the wait, not the
    deadline (a CI run once waited out 8 minutes for it)."""
    disk = tmp_path / "node.raw"
    disk.write_bytes(b"\0" * 512)
    panic = "Kernel panic - not syncing: Fatal exception\\n---[ end Kernel panic - not syncing ]---"
    starts: list[int] = []

    def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
        starts.append(1)
        text = panic if len(starts) == 1 else MARKER
        return subprocess.Popen(
            ["sh", "-c", f'printf "%b\\n" "{text}"; exec sleep 120'],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    monkeypatch.setattr(boot_module, "_spawn", spawn)
    began = time.monotonic()
    result = boot_module.boot(boot_module.BootSpec(disk, "bios", timeout=60, accel="tcg"))
    assert len(starts) == 2 and result.fields["root_mode"] == "ro"
    assert time.monotonic() - began < 20


def test_a_kvm_failure_boots_the_same_spec_again_under_tcg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry is the spec as the first boot decided it (here the default root expectation
    and the log folder), with only the accelerator changed."""
    disk = tmp_path / "node.raw"
    disk.write_bytes(b"\0" * 512)
    logs = tmp_path / "logs"
    logs.mkdir()
    argvs: list[list[str]] = []
    _starts, fake = fake_guest(["KVM internal error. Suberror: 1", MARKER])

    def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
        argvs.append(argv)
        return fake(argv)

    monkeypatch.setattr(boot_module, "_spawn", spawn)
    result = boot_module.boot(
        boot_module.BootSpec(disk, "bios", timeout=20, accel="kvm", memory=1024, log_dir=logs)
    )
    assert result.accel == "tcg" and result.log_path == logs / "node.raw.bios.boot.log"
    assert argvs[0][argvs[0].index("-accel") + 1] == "kvm"
    assert argvs[1][argvs[1].index("-accel") + 1].startswith("tcg")
    assert all(argv[argv.index("-m") + 1] == "1024" for argv in argvs)
