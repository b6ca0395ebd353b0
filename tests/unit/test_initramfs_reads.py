"""An initramfs is taken from an earlier conversion only when what it was made from is the
same: the files the tool copied, which programs its module scripts name exist, the names in
the kernel's module and firmware folders. A package that touches none of that (htop) does not
make the tool run again; one that does, does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kairos_build.convert.convert import INITRD_FILE, KERNEL_FILE, reuse_initramfs
from kairos_build.convert.initramfs_reads import (
    READS_FILE,
    Reads,
    copied_files,
    reads_digest,
    script_words,
)

OWN = ("etc/dracut.conf.d", "usr/lib/dracut")
KVER = "6.1.0-1-amd64"


def write(root: Path, rel: str, text: str = "x") -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for rel, text in {
        "etc/machine-id": "0123",
        "usr/bin/sh": "shell",
        "usr/bin/mount": "mount",
        "etc/os-release": "ID=x",
        f"usr/lib/modules/{KVER}/kernel/loop.ko": "ko",
        "usr/lib/dracut/modules.d/90crypt/module-setup.sh": (
            "check() { require_binaries cryptsetup || return 1; }"
        ),
        "etc/dracut.conf.d/10-kairos.conf": 'hostonly="no"',
    }.items():
        write(root, rel, text)
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("sbin", "usr/sbin")):
        (root / link).symlink_to(target)
    (root / "usr/sbin").mkdir()
    return root


def staged(tmp_path: Path) -> Path:
    """What dracut kept: copies of some tree files, a file of its own, a link."""
    staging = tmp_path / "staging"
    for rel in (
        "usr/bin/sh",
        "etc/os-release",
        f"usr/lib/modules/{KVER}/kernel/loop.ko",
        "usr/lib/dracut/modules.d/90crypt/module-setup.sh",
        "init-generated",
        "etc/machine-id",
    ):
        write(staging, rel)
    (staging / "usr/bin/bash").symlink_to("sh")
    return staging


def reads_of(tree: Path, tmp_path: Path) -> Reads:
    files = copied_files(tree, staged(tmp_path), OWN)
    words = script_words(tree, OWN)
    return Reads({"kernel": KVER}, files, words, reads_digest(tree, files, words))


def test_the_record_holds_the_copied_tree_files_and_the_module_words(tree: Path, tmp_path: Path) -> None:
    reads = reads_of(tree, tmp_path)
    # Not the tool's own files (inputs of the stage already), not its own, not links, not the
    # machine-id (random in every packages tree).
    assert reads.files == ("etc/os-release", "usr/bin/sh", f"usr/lib/modules/{KVER}/kernel/loop.ko")
    assert "cryptsetup" in reads.words and "require_binaries" in reads.words


CHANGES: dict[str, tuple[Callable[[Path], None], bool]] = {
    "a program no module names (htop)": (lambda t: write(t, "usr/bin/htop"), True),
    "the build's machine-id": (lambda t: write(t, "etc/machine-id", "4567"), True),
    "its documentation": (lambda t: write(t, "usr/share/doc/htop/README"), True),
    "a file the tool did not copy": (lambda t: write(t, "usr/bin/mount", "new mount"), True),
    "a file it copied": (lambda t: write(t, "usr/bin/sh", "new shell"), False),
    "a program a module looks for": (lambda t: write(t, "usr/sbin/cryptsetup"), False),
    "a kernel module": (lambda t: write(t, f"usr/lib/modules/{KVER}/extra/zfs.ko"), False),
    "firmware": (lambda t: write(t, "usr/lib/firmware/x.bin"), False),
    "a udev rule": (lambda t: write(t, "usr/lib/udev/rules.d/60-x.rules"), False),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_what_keeps_the_initramfs_and_what_does_not(change: str, tree: Path, tmp_path: Path) -> None:
    reads = reads_of(tree, tmp_path)
    edit, same = CHANGES[change]
    edit(tree)
    assert (reads_digest(tree, reads.files, reads.words) == reads.digest) is same


def donor_entry(folder: Path, reads: Reads) -> Path:
    folder.mkdir()
    (folder / INITRD_FILE).write_bytes(b"initramfs")
    (folder / KERNEL_FILE).write_text(KVER + "\n")
    reads.save(folder)
    return folder


def test_a_matching_donor_is_linked_and_a_different_one_is_not(tree: Path, tmp_path: Path) -> None:
    reads = reads_of(tree, tmp_path)
    donor = donor_entry(tmp_path / "donor", reads)
    write(tree, "usr/bin/htop")
    target = tmp_path / "target"
    target.mkdir()
    assert reuse_initramfs(tree, target, [donor], {"kernel": KVER})
    assert (target / INITRD_FILE).stat().st_ino == (donor / INITRD_FILE).stat().st_ino
    assert Reads.load(target) == reads and (target / READS_FILE).is_file()

    other = tmp_path / "other"
    other.mkdir()
    assert not reuse_initramfs(tree, other, [donor], {"kernel": "6.2.0"})  # another kernel
    write(tree, "usr/bin/sh", "new shell")
    assert not reuse_initramfs(tree, other, [donor], {"kernel": KVER})  # a copied file changed
    assert not list(other.iterdir())
