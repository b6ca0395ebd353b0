"""Filesystem facts shared by the build host and the node agent (stdlib only: the agent in
every image imports this module with the image's own python3)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

# Runtime-only directories, mounted at boot: a system image ships them empty (mksquashfs -e
# patterns, relative to the tree).
RUNTIME_EXCLUDES = ("proc/*", "sys/*", "dev/*", "run/*", "tmp/*")


def grub_safe_features(mke2fs_version: str) -> str:
    """mkfs.ext4 `-O` value for a filesystem grub reads: GRUB 2.06 refuses ext4 with
    metadata_csum_seed or orphan_file, which newer e2fsprogs turn on by default, so both go
    off where that mke2fs knows them. `mke2fs_version` is `mkfs.ext4 -V`'s first line."""
    found = re.search(r"mke2fs (\d+)\.(\d+)", mke2fs_version)
    features = ["^metadata_csum_seed"]
    if found and (int(found.group(1)), int(found.group(2))) >= (1, 47):
        features.append("^orphan_file")
    return ",".join(features)


def tree_bytes(root: Path) -> int:
    """Disk space the files under `root` use (hard links once), plus an inode's worth each."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            total += st.st_blocks * 512 + 256
    return total
