"""Pieces of the ISO and its options: grub quoting of user kernel arguments, ISO9660 names,
ISO overlays, the hybrid patching of the El Torito GRUB image, rootfs overlays."""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

from kairos_build.config.settings import kernel_args
from kairos_build.convert.framework import layer_tree
from kairos_build.core.errors import InputError
from kairos_build.disk.grub import grub_quote
from kairos_build.disk.iso9660 import IsoTree
from kairos_build.disk.isohybrid import patch_bios_image, sfdisk_script
from kairos_build.exporters.iso import live_cmdline, overlay_files


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("quiet", "quiet"),
        ("console=ttyS0,115200", "console=ttyS0,115200"),
        ("systemd.run=a b", "'systemd.run=a b'"),
        ("x;reboot", "'x;reboot'"),
        ("it's", "'it'\\''s'"),
        ("$(id)", "'$(id)'"),
    ],
)
def test_user_kernel_arguments_are_single_grub_words(word: str, quoted: str) -> None:
    assert grub_quote(word) == quoted


def test_live_cmdline_keeps_the_console_order_and_quotes_extras() -> None:
    line = live_cmdline("COS_LIVE", ("a;b",))
    assert line.index("console=tty1") < line.index("console=ttyS0,115200") < line.index("'a;b'")


def test_kernel_args_merge_repeated_and_one_line() -> None:
    assert kernel_args(["a=1"], "quiet 'x=y z'") == ("a=1", "quiet", "x=y z")
    assert kernel_args(None, None) == ()
    with pytest.raises(InputError, match="does not parse"):
        kernel_args(None, "'unclosed")
    with pytest.raises(InputError, match="control characters"):
        kernel_args(["a\nb"], None)


def test_iso9660_names_are_valid_and_unique_per_folder() -> None:
    iso = IsoTree()
    assert iso._iso_path("/boot", folder=True) == "/BOOT"
    assert iso._iso_path("/boot/kernel", folder=False) == "/BOOT/KERNEL."
    assert iso._iso_path("/a-b.txt", folder=False) == "/A_B.TXT"
    second = iso._iso_path("/a_b.txt", folder=False)
    assert second != "/A_B.TXT" and second.endswith(".TXT")
    long = iso._iso_path("/" + "x" * 80 + ".configuration", folder=False)
    assert len(long.lstrip("/")) <= 30 and set(long.lstrip("/")) <= set("X_.CONFIGURATN0123456789")


def test_iso_overlay_lists_files_and_refuses_what_would_break_the_iso(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    assert overlay_files(tmp_path) == {"/docs/a.txt": tmp_path / "docs" / "a.txt"}
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "kernel").write_text("x")
    with pytest.raises(InputError, match="would replace"):
        overlay_files(tmp_path)
    (tmp_path / "boot" / "kernel").unlink()
    (tmp_path / "link").symlink_to("/etc/shadow")
    with pytest.raises(InputError, match="not a regular file"):
        overlay_files(tmp_path)


def test_bios_image_patch_points_at_the_core_and_fixes_the_checksum(tmp_path: Path) -> None:
    iso = tmp_path / "x.iso"
    image = bytearray(os.urandom(8192))
    lba = 37
    with iso.open("wb") as handle:
        handle.seek(lba * 2048)
        handle.write(image)
    patch_bios_image(iso, lba, len(image))
    patched = iso.read_bytes()[lba * 2048 :]
    assert struct.unpack_from("<Q", patched, 2548)[0] == lba * 4 + 5
    assert patched[:20] == image[:20] and patched[24:2548] == image[24:2548]
    assert patched[2556:] == image[2556:]
    words = struct.unpack(f"<{(len(patched) - 64) // 4}I", patched[64:])
    assert struct.unpack_from("<I", patched, 20)[0] == sum(words) & 0xFFFFFFFF


def test_iso_gpt_keeps_clear_of_the_system_area_and_covers_the_esp() -> None:
    script = sfdisk_script("seed", iso_end=300 << 20, esp_start=301 << 20, esp_size=3 << 20)
    assert "first-lba: 64" in script and "start=64," in script
    assert f"start={(301 << 20) // 512}, size={(3 << 20) // 512}, type=C12A7328" in script
    assert script == sfdisk_script("seed", 300 << 20, 301 << 20, 3 << 20)


def test_rootfs_overlay_copies_files_as_root_and_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "opt").symlink_to("/tmp/outside-the-root")
    overlay = tmp_path / "overlay"
    (overlay / "etc" / "app").mkdir(parents=True)
    (overlay / "etc" / "app" / "run.sh").write_text("#!/bin/sh\n")
    (overlay / "etc" / "app" / "run.sh").chmod(0o750)
    (overlay / "opt").mkdir()
    (overlay / "opt" / "x").write_text("inside")
    os.mkfifo(overlay / "fifo")
    layer_tree(root, overlay)
    script = root / "etc" / "app" / "run.sh"
    assert script.read_text() == "#!/bin/sh\n" and (script.stat().st_mode & 0o777) == 0o750
    assert script.stat().st_uid == 0
    assert not Path("/tmp/outside-the-root/x").exists()  # the link resolved inside the root
    assert (root / "tmp" / "outside-the-root" / "x").read_text() == "inside"
    assert not (root / "fifo").exists()


@pytest.mark.parametrize("across", [False, True], ids=["same-filesystem", "tmpfs-to-disk"])
def test_copy_range_places_the_whole_source_at_the_offset(tmp_path: Path, across: bool) -> None:
    """In the kernel on one filesystem; in chunks where it refuses (EXDEV across kinds)."""
    from kairos_build.disk.isohybrid import copy_range

    if across and not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm tmpfs to copy across from")
    folder = Path(tempfile.mkdtemp(dir="/dev/shm")) if across else tmp_path
    source, target = folder / "esp.img", tmp_path / "iso"
    payload = os.urandom(3 << 20) + b"end"
    source.write_bytes(payload)
    target.write_bytes(b"head")
    with source.open("rb") as src, target.open("r+b") as dst:
        copy_range(src.fileno(), dst.fileno(), 1 << 20)
    data = target.read_bytes()
    assert data[:4] == b"head" and data[4 : 1 << 20] == bytes((1 << 20) - 4)
    assert data[1 << 20 :] == payload
    if across:
        shutil.rmtree(folder)


def test_a_uefi_only_iso_gets_the_esp_as_a_gpt_partition_and_keeps_its_iso9660(tmp_path: Path) -> None:
    """The Trusted Boot ISO's disk half (`append_esp`): the ESP's bytes at partition 2's start,
    the ISO9660 part not moved, the protective MBR entry marked active, sfdisk reads it back."""
    import json
    import subprocess

    from kairos_build.disk.isohybrid import append_esp

    iso, esp = tmp_path / "x.iso", tmp_path / "esp.img"
    data = os.urandom(3 << 20)
    iso.write_bytes(b"\0" * 32768 + b"\x01CD001" + data[: (3 << 20) - 32774])
    esp.write_bytes(os.urandom(5 << 20))
    append_esp(iso, esp, "seed")
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(iso)], check=True, capture_output=True, text=True).stdout
    )["partitiontable"]
    first, second = table["partitions"]
    assert second["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    with iso.open("rb") as handle:
        handle.seek(second["start"] * 512)
        assert handle.read(5 << 20) == esp.read_bytes()
        handle.seek(32768)
        assert handle.read(6) == b"\x01CD001"
        handle.seek(446)
        assert handle.read(1) == b"\x80"
    assert first["start"] == 64 and second["start"] * 512 >= 3 << 20
