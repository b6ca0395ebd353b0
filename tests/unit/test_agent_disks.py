"""The agent's choice of disk and its refusals, on a fake /sys/class/block; grub's BIOS boot
sector as both the build and the agent patch it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kairos_build.agent import disks, install
from kairos_build.agent.config import InstallSpec
from kairos_build.agent.system import NodeError
from kairos_build.disk.bootsector import BootSectorError, patched_images


def fake_disk(root: Path, name: str, sectors: int, partitions: int = 0, ro: bool = False) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "size").write_text(f"{sectors}\n")
    (folder / "ro").write_text("1\n" if ro else "0\n")
    for number in range(1, partitions + 1):
        part = folder / f"{name}{number}"
        part.mkdir()
        (part / "partition").write_text(f"{number}\n")
        (part / "size").write_text("2048\n")


@pytest.fixture
def sys_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "block"
    root.mkdir()
    monkeypatch.setattr(disks, "SYS_BLOCK", root)
    monkeypatch.setattr(disks, "held_devices", lambda: set())
    return root


def test_auto_takes_the_first_whole_empty_writable_disk(sys_block: Path) -> None:
    fake_disk(sys_block, "loop0", 1 << 20)
    fake_disk(sys_block, "sr0", 1 << 20)
    fake_disk(sys_block, "vda", 1 << 24, partitions=2)
    fake_disk(sys_block, "vdb", 1 << 24, ro=True)
    fake_disk(sys_block, "vdc", 1 << 24)
    assert disks.pick_device("auto") == Path("/dev/vdc")


def test_no_disk_to_install_to_is_named_with_what_there_is(sys_block: Path) -> None:
    fake_disk(sys_block, "vda", 1 << 24, partitions=3)
    with pytest.raises(NodeError, match=r"no disk to install to.*vda \(8192 MiB, 3 partitions\)"):
        disks.pick_device("auto")


def test_a_disk_too_small_is_refused_with_the_numbers(sys_block: Path) -> None:
    fake_disk(sys_block, "vda", (2 << 30) // 512)
    with pytest.raises(NodeError, match=r"/dev/vda \(2.00 GiB\) is too small: .*need") as found:
        install.plan(InstallSpec(), Path("/dev/vda"), 700 << 20, 300 << 20)
    assert found.value.hint is not None and "install.partitions" in found.value.hint


def test_the_layout_fills_the_disk_like_the_raw_exporter(sys_block: Path) -> None:
    fake_disk(sys_block, "vda", (16 << 30) // 512)
    layout = install.plan(InstallSpec(sizes=(("oem", 128 << 20),)), Path("/dev/vda"), 700 << 20, 300 << 20)
    names = [part.label or part.name for part in layout.partitions]
    assert names == ["COS_GRUB", "bios", "COS_OEM", "COS_RECOVERY", "COS_STATE", "COS_PERSISTENT"]
    assert layout.by_label("COS_OEM").size == 128 << 20
    assert layout.partitions[-1].end + (1 << 20) == layout.disk_size == 16 << 30


def test_grub_images_are_patched_to_find_each_other() -> None:
    core, boot = bytes(4096), bytes(512)
    patched_core, mbr = patched_images(core, boot, start=66 << 20, size=1 << 20)
    first = (66 << 20) // 512
    assert struct.unpack_from("<QHH", patched_core, 500) == (first + 1, 7, 0x820)
    assert struct.unpack_from("<Q", mbr, 0x5C) == (first,)
    assert len(mbr) == 440  # the partition table after it is left alone
    with pytest.raises(BootSectorError, match="does not fit"):
        patched_images(bytes(3 << 20), boot, start=1 << 20, size=1 << 20)


def test_deploy_writes_both_images_and_leaves_no_partial_one(tmp_path: Path) -> None:
    """The real mkfs.ext4 and cp, as on a node: twice, the second replacing the first."""
    import subprocess

    from kairos_build.agent.images import deploy_system

    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "kairos-release").write_text('KAIROS_VERSION="v1"\n')
    images = tmp_path / "state" / "cOS"
    for _ in range(2):
        deploy_system(tree, images, 32 << 20)
    assert sorted(path.name for path in images.iterdir()) == ["active.img", "passive.img"]
    for name in ("active.img", "passive.img"):
        image = images / name
        assert image.stat().st_size == 32 << 20
        assert image.stat().st_blocks * 512 < 32 << 20  # sparse
        subprocess.run(["e2fsck", "-fn", str(image)], check=True, capture_output=True)
        label = subprocess.run(["e2label", str(image)], capture_output=True, text=True, check=True)
        assert label.stdout.strip() == "COS_ACTIVE"


@pytest.mark.parametrize(
    ("booted", "hint"),
    [("recovery_boot", "reboot into the active system"), ("livecd_boot", "install the node first")],
)
def test_an_upgrade_is_refused_off_an_installed_system(
    monkeypatch: pytest.MonkeyPatch, booted: str, hint: str
) -> None:
    from kairos_build.agent import upgrade

    monkeypatch.setattr(upgrade, "boot_state", lambda: booted)
    with pytest.raises(NodeError, match=f"this boot is {booted}") as found:
        upgrade.upgrade("oci-archive:/nowhere.tar")
    assert found.value.hint == hint


def test_a_reset_is_refused_off_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    from kairos_build.agent import reset
    from kairos_build.agent.config import ResetSpec

    monkeypatch.setattr(reset, "boot_state", lambda: "active_boot")
    with pytest.raises(NodeError, match="reset runs from the recovery system"):
        reset.reset(ResetSpec())
