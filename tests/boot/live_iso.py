"""The boot of a plain live ISO (no cloud-config) through `kairos-build boot --json`, and what
its report must say. Two modules boot one: test_boot_iso (as a CD under enforced Secure Boot)
and test_staged_conversion (its framework-edit ISO as a CD under SeaBIOS), so each firmware
is proven once with the same checks."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

# Read in the guest (the firmware's SecureBoot variable), never assumed from the options.
SECUREBOOT = {"bios": "unsupported", "uefi": "disabled", "uefi-secureboot": "enabled"}


def assert_healthy(report: dict[str, object], firmware: str, entry: str) -> dict[str, str]:
    """The report's fields, after checking the boot settled healthy on `entry`."""
    fields = report["fields"]
    assert isinstance(fields, dict)
    assert fields["state"] == "running" and fields["failed"] == "none", fields
    assert (report["state"], report["failed"]) == ("running", [])
    assert report["entry"] == fields["entry"] == entry
    assert report["secureboot"] == fields["secureboot"] == SECUREBOOT[firmware]
    assert fields["firmware"] == ("bios" if firmware == "bios" else "uefi")
    if firmware == "uefi-secureboot":  # the kernel says so too, and runs locked down
        log = Path(str(report["log_path"])).read_text(errors="replace")
        assert "Secure boot enabled" in log and fields["lockdown"] == "integrity"
    return fields


def boot_plain_iso(iso: Path, firmware: str) -> dict[str, str]:
    """Boot `iso` as a CD; it must settle healthy on the live squashfs, on the `live` entry,
    with cloud-init kept out. The report's fields."""
    result = run_cli(
        "boot", str(iso), "--machine-firmware", firmware, "--timeout", "420", "--json", timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert report["firmware"] == firmware
    assert report["accel"] in ("kvm", "tcg")
    assert report["fields"]["flavor"] == "debian"
    assert report["fields"]["live"] == "squashfs"  # the squashfs from the ISO is the lower root
    assert report["fields"]["root"] == "overlay"  # with a writable overlay on top
    fields = assert_healthy(report, firmware, "live")
    log = Path(report["log_path"]).read_text(errors="replace")
    assert "KAIROS-BOOT-REPORT" in log
    # No cloud-config: our initramfs disabled cloud-init, so not one of its stages ran.
    assert "kairos: no cloud-config, cloud-init disabled for this boot" in log
    assert "Cloud-init v." not in log and "[FAILED]" not in log
    return fields
