"""kairos-efi-generator (overlays/common/usr/lib/systemd/system-generators) pulls efi.mount
into local-fs.target only when systemd-boot started an installed system (LoaderEntrySelected,
not the live entry): on any other boot nothing waits for COS_GRUB. Run under /bin/sh on
made-up efivars folders and command lines."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

OVERLAY = Path(__file__).parents[2] / "overlays/common/usr/lib/systemd"
GENERATOR = OVERLAY / "system-generators/kairos-efi-generator"
SELECTED = "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


def generate(tmp_path: Path, efivars: Path, cmdline: str = "root=LABEL=COS_STATE ro") -> Path:
    out = tmp_path / "normal"
    out.mkdir(parents=True)
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    subprocess.run(
        ["sh", str(GENERATOR), str(out), str(tmp_path / "early"), str(tmp_path / "late")],
        check=True,
        env={**os.environ, "KAIROS_EFIVARS": str(efivars), "KAIROS_CMDLINE": str(tmp_path / "cmdline")},
    )
    return out


def test_systemd_boot_gets_the_esp_mounted(tmp_path: Path) -> None:
    efivars = tmp_path / "efivars"
    efivars.mkdir()
    (efivars / SELECTED).write_bytes(b"\x06\x00\x00\x00a\x00")
    out = generate(tmp_path, efivars)
    link = out / "local-fs.target.wants/efi.mount"
    assert os.readlink(link) == "/usr/lib/systemd/system/efi.mount"


def test_grub_a_live_cd_or_bios_pull_in_nothing(tmp_path: Path) -> None:
    efivars = tmp_path / "efivars"
    efivars.mkdir()  # a UEFI boot through grub: efivars without systemd-boot's variable
    assert list(generate(tmp_path, efivars).iterdir()) == []
    assert list(generate(tmp_path / "bios", tmp_path / "no-efivars").iterdir()) == []


def test_a_trusted_boot_live_medium_pulls_in_nothing(tmp_path: Path) -> None:
    """systemd-boot starts the Trusted Boot ISO too, which has no ESP of its own to mount."""
    efivars = tmp_path / "efivars"
    efivars.mkdir()
    (efivars / SELECTED).write_bytes(b"\x06\x00\x00\x00l\x00")
    assert list(generate(tmp_path, efivars, "root=LABEL=COS_LIVE kairos.entry=live").iterdir()) == []


def test_efi_mount_is_not_enabled_by_the_preset() -> None:
    # Enabled, it would be wanted on every boot again, and wait for COS_GRUB first.
    presets = (OVERLAY / "system-preset/80-kairos.preset").read_text().split()
    assert "efi.mount" not in presets
    assert "[Install]" not in (OVERLAY / "system/efi.mount").read_text()
