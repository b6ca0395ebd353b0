"""ext4 images from a tree carry nothing of the host's clock: mke2fs -d copies ctime and atime
from the host files, and make_ext4 pins them, so the same tree gives the same bytes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from kairos_build.disk.ext4 import make_ext4, used_inode_ranges

EPOCH = 1700000000
UUID = "11111111-2222-3333-4444-555555555555"


def small_tree(root: Path) -> None:
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    (root / "etc/ssh/sshd_config").write_text("Port 22\n")
    (root / "bin").symlink_to("usr/bin")
    os.link(root / "etc/os-release", root / "etc/os-release.twin")
    os.mkfifo(root / "etc/fifo")
    for path in [*root.rglob("*"), root]:
        os.utime(path, (EPOCH - 50, EPOCH - 100), follow_symlinks=False)


def test_the_same_tree_gives_the_same_image_after_its_ctimes_and_atimes_moved(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    small_tree(tree)
    make_ext4(tmp_path / "one.img", 16 << 20, "X", UUID, source=tree, epoch=EPOCH)
    time.sleep(1.1)
    os.chown(tree / "etc/ssh/sshd_config", 0, 0)  # a new ctime, nothing else
    (tree / "etc/os-release").read_text()  # a read (atime, where the mount lets it move)
    os.utime(tree / "etc", (time.time(), EPOCH - 100))  # a new atime on a folder
    make_ext4(tmp_path / "two.img", 16 << 20, "X", UUID, source=tree, epoch=EPOCH)
    assert (tmp_path / "one.img").read_bytes() == (tmp_path / "two.img").read_bytes()

    stat = subprocess.run(
        ["debugfs", "-R", "stat /etc/ssh/sshd_config", str(tmp_path / "one.img")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert stat.count(f"0x{EPOCH:08x}:") >= 3  # ctime, atime, crtime: the epoch; mtime the tree's
    assert f"0x{EPOCH - 100:08x}:" in stat
    fsck = subprocess.run(["e2fsck", "-fn", str(tmp_path / "one.img")], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_an_image_inside_a_disk_file_is_pinned_the_same(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    small_tree(tree)
    make_ext4(tmp_path / "alone.img", 16 << 20, "X", UUID, source=tree, epoch=EPOCH)
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as handle:
        handle.truncate(20 << 20)
    make_ext4(disk, 16 << 20, "X", UUID, source=tree, offset=2 << 20, epoch=EPOCH)
    with disk.open("rb") as handle:
        handle.seek(2 << 20)
        assert handle.read(16 << 20) == (tmp_path / "alone.img").read_bytes()


def test_used_inode_ranges_are_the_root_and_the_files(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    small_tree(tree)
    make_ext4(tmp_path / "fs.img", 16 << 20, "X", UUID, source=tree, epoch=EPOCH)
    ranges = list(used_inode_ranges(str(tmp_path / "fs.img")))
    # root (2), then from inode 11 on: lost+found, bin, etc, its fifo, os-release (and its
    # twin: one inode), ssh, sshd_config.
    assert ranges == [(2, 2), (11, 17)]
