"""The initramfs generator (kairos-immutable-generator.sh) run on the host with made-up kernel
command lines: which units it writes, and that only a Trusted Boot command line waits for
the TPM (systemd >= 257's tpm2.target waits up to 90 s for /dev/tpmrm0 where there is none)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

GENERATOR = (
    Path(__file__).parents[2] / "overlays/common/usr/lib/dracut/modules.d/"
    "90kairos-immutable/kairos-immutable-generator.sh"
)
GRUB = "root=LABEL=COS_STATE ro cos-img/filename=/cOS/active.img"
TRUSTED = (
    "root=LABEL=COS_STATE ro cos-img/filename=/cOS/system-ab.img "
    "kairos.verity.roothash=abcd kairos.verity.hashoffset=4096 rd.kairos.encrypt=tpm2"
)


def generate(tmp_path: Path, cmdline: str) -> Path:
    """The early folder the generator wrote for `cmdline`."""
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    script = tmp_path / "generator.sh"
    script.write_text(GENERATOR.read_text().replace("/proc/cmdline", str(tmp_path / "cmdline")))
    folders = [tmp_path / name for name in ("normal", "early", "late")]
    subprocess.run(["sh", str(script), *map(str, folders)], check=True)
    return folders[1]


@pytest.mark.parametrize(("cmdline", "waits"), [(GRUB, False), (TRUSTED, True)])
def test_only_a_trusted_boot_command_line_waits_for_the_tpm(
    tmp_path: Path, cmdline: str, waits: bool
) -> None:
    unit = (generate(tmp_path, cmdline) / "kairos-immutable.service").read_text()
    assert ("Wants=tpm2.target" in unit) is waits
    assert ("tpm2.target" in unit) is waits
    assert "After=sysroot.mount initrd-root-fs.target" in unit


def test_a_verified_image_is_opened_before_the_root_is_mounted(tmp_path: Path) -> None:
    early = generate(tmp_path, TRUSTED)
    verity = (early / "kairos-verity.service").read_text()
    assert "--hash-offset=4096 /run/kairos/state/cOS/system-ab.img kairos-root" in verity
    assert "What=/dev/mapper/kairos-root" in (early / "sysroot.mount").read_text()
