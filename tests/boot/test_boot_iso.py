"""Boot the real ISO under SeaBIOS and OVMF (TCG where KVM does not really work). Every boot
must settle healthy: systemd `running`, no failed unit (the harness refuses anything else),
on the entry that was meant to boot. The plain ISO boots with neither a network card nor a
cloud-config (cloud-init must stay out), as a CD: here under OVMF with Secure Boot enforced
(Microsoft's keys: the image's own shim, grub and kernel); under SeaBIOS in
test_staged_conversion.py (the ISO of a framework edit, booted once for both with the checks
of tests/boot/live_iso.py); under plain OVMF in the node lifecycle test
(test_node_lifecycle.py). The injected one boots as a USB disk and applies its cloud-config
with a network card under enforced Secure Boot and without one under SeaBIOS."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boot.live_iso import assert_healthy, boot_plain_iso
from tests.conftest import run_cli

pytestmark = pytest.mark.boot


# SeaBIOS boots the plain ISO as a CD in test_staged_conversion (its framework-edit ISO, with
# these same checks): one boot there proves both.
@pytest.mark.parametrize("firmware", ["uefi-secureboot"])
def test_iso_boots_to_multi_user_on_the_live_root(built_iso: tuple[Path, str], firmware: str) -> None:
    boot_plain_iso(built_iso[0], firmware)


def test_a_medium_that_does_not_boot_fails_with_the_console_tail(tmp_path: Path) -> None:
    blank = tmp_path / "blank.iso"
    blank.write_bytes(b"\0" * (1 << 20))
    result = run_cli("boot", str(blank), "--machine-firmware", "bios", "--timeout", "15", timeout=120)
    assert result.returncode == 1
    assert "no boot report within 15 s" in result.stderr
    assert "full log:" in result.stderr


# A fixed SHA-512 crypt hash of "kairos" (openssl passwd -6 -salt kairossalt kairos).
PASSWD_HASH = (
    "$6$kairossalt$2UEPcvODkavwUpBtdnk.Ijv/JPxVEvnxJxXVYuUGSSzTCZ7xnW1jR42RHxz0SfHKjVP3eCfoQ3zvWm.GDV/sk0"
)
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKairosBootTestKeyxxxxxxxxxxxxxxxxxxxxxxx test@kairos"
INJECTED = f"""#cloud-config
hostname: kairos-injected
users:
  - name: kairos-user
    passwd: "{PASSWD_HASH}"
    lock_passwd: false
    groups: [sudo]
    ssh_authorized_keys: ["{SSH_KEY}"]
write_files:
  - path: /etc/kairos-test/written
    content: "written by cloud-config"
runcmd:
  - >-
    echo "KAIROS-CLOUD-CONFIG groups=$(id -nG kairos-user | tr ' ' ,)
    file=$(tr ' ' _ < /etc/kairos-test/written)
    key=$(cut -d' ' -f3 /home/kairos-user/.ssh/authorized_keys)
    hash=$(getent shadow kairos-user | cut -d: -f2)" > /dev/console
"""


@pytest.fixture(scope="module")
def injected_iso(built_iso: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("injected")
    config = folder / "config.yaml"
    config.write_text(INJECTED)
    out = folder / "injected.iso"
    result = run_cli("inject", str(built_iso[0]), "--cloud-config", str(config), "-o", str(out))
    assert result.returncode == 0, result.stderr
    yield out
    shutil.rmtree(folder, ignore_errors=True)  # CI's disk is shared: free it once checked


@pytest.mark.parametrize(("firmware", "nic"), [("bios", "none"), ("uefi-secureboot", "user")])
def test_injected_iso_boots_as_a_usb_disk_and_applies_its_cloud_config(
    injected_iso: Path, firmware: str, nic: str
) -> None:
    result = run_cli(
        "boot",
        str(injected_iso),
        "--as-disk",
        "--machine-firmware",
        firmware,
        "--nic",
        nic,
        "--expect-entry",
        "live-config",
        "--timeout",
        "480",
        "--json",
        timeout=660,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert report["fields"]["live"] == "squashfs"
    assert report["fields"]["hostname"] == "kairos-injected"
    assert_healthy(report, firmware, "live-config")
    log = Path(report["log_path"]).read_text(errors="replace")
    assert "[FAILED]" not in log
    # With no network card the wait for the network is skipped at once, not timed out.
    assert ("kairos: no network card, not waiting for the network" in log) == (nic == "none")
    assert "Booting `Kairos Debian (live, with the cloud-config applied)'" in log
    # Anywhere in its line: the serial console is shared, and a getty prompt ("NAME login: ")
    # may come first when the machine is slow (two boots at once).
    line = next(
        row[row.index("KAIROS-CLOUD-CONFIG ") :] for row in log.splitlines() if "KAIROS-CLOUD-CONFIG " in row
    )
    assert "groups=kairos-user,sudo" in line
    assert "file=written_by_cloud-config" in line
    assert f"key={SSH_KEY.split()[2]}" in line
    assert f"hash={PASSWD_HASH}" in line
