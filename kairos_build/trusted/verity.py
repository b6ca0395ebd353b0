"""The root image of a Trusted Boot disk: the squashfs with its dm-verity hash tree appended.

The UKI's signed command line carries the root hash and where the tree starts
(`kairos.verity.roothash=`, `kairos.verity.hashoffset=`), and the initramfs opens the image
through dm-verity (overlays/.../kairos-immutable-generator.sh). So the UKI pins every byte of
the OS without holding it: a changed block reads as an I/O error, never as changed data, and
the UKI stays the size of a kernel and an initrd whatever the size of the OS.

One file holds both the data and its tree (veritysetup's --hash-offset), so an upgrade or a
copy moves one file. Salt and UUID come from the build's seed: the same rootfs gives the same
tree and root hash.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kairos_build.core.errors import BuildError
from kairos_build.core.log import step
from kairos_build.core.tools import run
from kairos_build.disk.layout import stable_uuid

BLOCK = 4096
TOOLS = ("veritysetup", "cp")
_ROOT_HASH = re.compile(r"^Root hash:\s*([0-9a-f]{64})\s*$", re.MULTILINE)


@dataclass(frozen=True)
class VerityImage:
    path: Path
    root_hash: str
    hash_offset: int  # bytes: where the hash tree (its superblock first) starts

    def kernel_args(self) -> tuple[str, ...]:
        return (f"kairos.verity.roothash={self.root_hash}", f"kairos.verity.hashoffset={self.hash_offset}")


def make_verity_image(squashfs: Path, output: Path, seed: str) -> VerityImage:
    """A copy of `squashfs` padded to whole blocks, with its hash tree appended at `output`."""
    output.unlink(missing_ok=True)
    run(["cp", "--reflink=auto", "--sparse=always", str(squashfs), str(output)])
    data_bytes = -(-output.stat().st_size // BLOCK) * BLOCK
    os.truncate(output, data_bytes)
    salt = hashlib.sha256(f"{seed}/verity-salt".encode()).hexdigest()
    with step(f"hashing the root image for dm-verity ({data_bytes >> 20} MiB)"):
        out = run(
            [
                "veritysetup",
                "format",
                "--hash=sha256",
                f"--data-block-size={BLOCK}",
                f"--hash-block-size={BLOCK}",
                f"--data-blocks={data_bytes // BLOCK}",
                f"--hash-offset={data_bytes}",
                f"--salt={salt}",
                f"--uuid={stable_uuid(seed, 'verity')}",
                str(output),
                str(output),
            ],
            capture=True,
        )
    found = _ROOT_HASH.search(out)
    if found is None:
        raise BuildError("veritysetup format printed no root hash", hint=out.strip()[-400:])
    return VerityImage(output, found.group(1), data_bytes)
