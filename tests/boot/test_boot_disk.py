"""Boot the disk images: raw under SeaBIOS and OVMF, qcow2 under OVMF (the setup-mode firmware
and the TPM boot the Trusted Boot disk: tests/boot/test_trusted_boot.py). Each must reach
multi-user with / read-only from cOS/active.img, /etc on an overlay, and the persistent
partition in use; what is written under /usr/local survives a reboot, /etc does not. Each
boot must settle healthy (systemd `running`, no failed unit) on the `active` entry; the disks
carry a cloud-config (COS_OEM), applied without a network card (raw) and with one (qcow2)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.boot
PROBE = re.compile(r"KAIROS-PROBE usr_local=(\S+) etc=(\S+) root=(\S+)")


def boot(disk: Path, firmware: str, *extra: str) -> tuple[dict[str, str], dict[str, str]]:
    """Boot and return the marker's fields and the probe's findings."""
    result = run_cli(
        "boot",
        str(disk),
        "--machine-firmware",
        firmware,
        "--timeout",
        "420",
        "--json",
        "--expect-entry",
        "active",
        *extra,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    fields = report["fields"]
    assert fields["state"] == "running" and fields["failed"] == "none", fields
    assert (report["state"], report["failed"], report["entry"]) == ("running", [], "active")
    # Read in the guest (the firmware's SecureBoot variable), never assumed from the options.
    assert (
        report["secureboot"]
        == {
            "bios": "unsupported",
            "uefi": "disabled",
            "uefi-secureboot": "enabled",
            "uefi-secureboot-setup": "disabled",
        }[firmware]
    )
    log = Path(report["log_path"]).read_text(errors="replace")
    assert "[FAILED]" not in log
    found = PROBE.findall(log)
    assert len(found) == 1, "the probe unit reports once per boot"
    usr_local, etc, root = found[0]
    return report["fields"], {"usr_local": usr_local, "etc": etc, "root": root}


def assert_immutable(fields: dict[str, str]) -> None:
    assert fields["root_mode"] == "ro" and fields["root"] == "ext4"
    assert fields["image"] == "/cOS/active.img"
    # The file below / (the loop device's backing file), not only the command line's word.
    assert fields["root_image"].endswith("/cOS/active.img") and fields["verity"] == "none"
    assert fields["etc"] == "overlay" and fields["persistent"] == "yes"
    assert fields["live"] == "none"
    assert int(fields["ssh_host_keys"]) >= 1  # made on first boot
    assert re.fullmatch(r"[0-9a-f]{32}", fields["machine_id"])


def test_raw_disk_boots_both_firmwares_and_keeps_persistent_paths(
    built_disks: tuple[dict[str, Path], str], tmp_path: Path
) -> None:
    disk = tmp_path / "node.raw"
    subprocess.run(["cp", "--sparse=always", str(built_disks[0]["raw"]), str(disk)], check=True)

    first, probe = boot(disk, "bios", "--writable")
    assert_immutable(first)
    assert probe == {"usr_local": "none", "etc": "none", "root": "read-only"}
    assert first["hostname"] == "kairos-disk-test"  # from the cloud-config on COS_OEM

    # The second boot under enforced Secure Boot: the image's shim, grub and kernel from
    # COS_GRUB and active.img (plain OVMF boots the qcow2 below, the same bytes).
    second, probe = boot(disk, "uefi-secureboot", "--writable")
    assert second["lockdown"] == "integrity"
    assert_immutable(second)
    # /usr/local kept the first boot's count; /etc (in memory) did not.
    assert probe == {"usr_local": "1", "etc": "none", "root": "read-only"}
    assert second["machine_id"] == first["machine_id"]  # made once, kept


def test_qcow2_boots(built_disks: tuple[dict[str, Path], str]) -> None:
    # Under plain OVMF only: the qcow2 holds the raw disk's bytes (qemu-img compare, in the disk
    # image tests), which boot under SeaBIOS and Secure Boot above; this proves the container
    # format, and a UEFI boot through shim with Secure Boot off.
    fields, probe = boot(built_disks[0]["qcow2"], "uefi", "--nic", "user")
    assert_immutable(fields)
    assert fields["hostname"] == "kairos-disk-test"  # the cloud-config, with a network card
    assert probe["root"] == "read-only"
