"""Boot the real ISO under SeaBIOS and OVMF (TCG where KVM does not really work)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.boot


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_iso_boots_to_multi_user_on_the_live_root(built_iso: tuple[Path, str], firmware: str,
                                                   tmp_path: Path) -> None:
    iso = built_iso[0]
    result = run_cli("boot", str(iso), "--firmware", firmware, "--timeout", "420", "--json",
                     timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert report["firmware"] == firmware
    assert report["accel"] in ("kvm", "tcg")
    assert report["fields"]["flavor"] == "debian"
    assert report["fields"]["live"] == "squashfs"  # the squashfs from the ISO is the lower root
    assert report["fields"]["root"] == "overlay"  # with a writable overlay on top
    log = Path(report["log_path"]).read_text(errors="replace")
    assert "KAIROS-BOOT-OK" in log


def test_a_medium_that_does_not_boot_fails_with_the_console_tail(tmp_path: Path) -> None:
    blank = tmp_path / "blank.iso"
    blank.write_bytes(b"\0" * (1 << 20))
    result = run_cli("boot", str(blank), "--firmware", "bios", "--timeout", "15", timeout=120)
    assert result.returncode == 1
    assert "no boot marker within 15 s" in result.stderr
    assert "full log:" in result.stderr
