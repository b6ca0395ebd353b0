"""The boot report's shell functions (overlays/common/usr/lib/kairos/boot-report) on made-up
sysfs trees: which device is /, whether dm-verity checks it, which image file lies below it,
and the TPM's version. The script runs in the guest (a real boot in tests/boot); here it is
sourced with KAIROS_REPORT_FUNCTIONS=1, which stops it after its functions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "overlays/common/usr/lib/kairos/boot-report"
IMAGE = "/run/kairos/state/cOS/active.img"


def call(function: str, *args: str) -> str:
    """Run one of the script's functions under /bin/sh (dash on Debian, as in the guest)."""
    result = subprocess.run(
        ["sh", "-c", f'. "$0"; {function} "$@"', str(SCRIPT), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "KAIROS_REPORT_FUNCTIONS": "1"},
    )
    return result.stdout.strip()


def mountinfo(tmp_path: Path, *roots: str) -> Path:
    lines = [f"{20 + i} 1 {majmin} / / ro,relatime shared:1 - fs src ro" for i, majmin in enumerate(roots)]
    lines.append("30 20 0:5 / /dev rw - devtmpfs udev rw")
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    return path


def block(sys: Path, majmin: str) -> Path:
    device = sys / "dev/block" / majmin
    device.mkdir(parents=True)
    return device


def loop(device: Path, backing_file: str) -> None:
    (device / "loop").mkdir(parents=True)
    (device / "loop/backing_file").write_text(backing_file + "\n")


def test_the_root_device_is_the_last_mount_on_slash(tmp_path: Path) -> None:
    assert call("root_device", str(mountinfo(tmp_path, "8:3", "7:0"))) == "7:0"
    assert call("root_device", str(mountinfo(tmp_path))) == "none"


def test_an_ext4_root_on_a_loop_device_is_not_verity(tmp_path: Path) -> None:
    sys = tmp_path / "sys"
    loop(block(sys, "7:0"), IMAGE)
    assert call("root_verity", str(sys), "7:0") == "none"
    assert call("root_images", str(sys), "7:0") == IMAGE


def test_a_verity_root_names_the_files_of_its_loop_devices_once(tmp_path: Path) -> None:
    sys = tmp_path / "sys"
    dm = block(sys, "254:0")
    (dm / "dm").mkdir()
    (dm / "dm/uuid").write_text("CRYPT-VERITY-6f0c4a2b9e1d4c8a8f3b2a1d0c9e8f7a-kairos-root\n")
    loop(dm / "slaves/loop0", IMAGE)  # data and hash in one file: the same loop device twice
    loop(dm / "slaves/loop1", IMAGE)
    loop(dm / "slaves/loop2", IMAGE + ".verity")
    assert call("root_verity", str(sys), "254:0") == "verity"
    assert call("root_images", str(sys), "254:0") == f"{IMAGE},{IMAGE}.verity"


@pytest.mark.parametrize("uuid", ["CRYPT-LUKS2-0123-root", "LVM-abc", ""])
def test_other_device_mapper_roots_are_not_verity(tmp_path: Path, uuid: str) -> None:
    sys = tmp_path / "sys"
    dm = block(sys, "254:1")
    (dm / "dm").mkdir()
    (dm / "dm/uuid").write_text(uuid + "\n")
    (dm / "slaves/sda3").mkdir(parents=True)  # a partition, no loop device: no image file
    assert call("root_verity", str(sys), "254:1") == "none"
    assert call("root_images", str(sys), "254:1") == ""


def test_an_overlay_root_has_no_device(tmp_path: Path) -> None:
    sys = tmp_path / "sys"
    (sys / "dev/block").mkdir(parents=True)
    assert call("root_verity", str(sys), "0:31") == "none"
    assert call("root_images", str(sys), "0:31") == ""


@pytest.mark.parametrize(
    ("files", "version"),
    [
        ({"class/tpm/tpm0/tpm_version_major": "2"}, "2.0"),
        ({"class/tpm/tpm0/tpm_version_major": "1"}, "1.2"),
        ({"class/tpm/tpm0/dev": "10:224", "class/tpmrm/tpmrm0/dev": "253:65536"}, "2.0"),
        ({"class/tpm/tpm0/dev": "10:224"}, "1.2"),  # before Linux 5.6 and no resource manager
        ({"class/tty/console/active": "ttyS0"}, "none"),
    ],
)
def test_tpm_version(tmp_path: Path, files: dict[str, str], version: str) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    assert call("tpm_version", str(tmp_path)) == version
