"""The node agent (kairos-agent's role): installs, upgrades and resets a Kairos node and keeps
its boot assessment. It runs on the image's own python3 with the standard library (plus PyYAML,
which cloud-init brings, for reading cloud-configs), so the conversion copies it into every
image with the stdlib-only modules it shares with the build: the disk layout, grub's BIOS boot
sector and the safe layer unpack.
"""

from __future__ import annotations

from pathlib import Path

# Files under kairos_build/ the conversion copies into /usr/lib/kairos/python/kairos_build/.
MODULES = (
    "__init__.py",
    "core/__init__.py",
    "core/errors.py",
    "core/rootfs.py",
    "disk/__init__.py",
    "disk/layout.py",
    "disk/bootsector.py",
    "disk/filesystems.py",
    "disk/kit.py",
    "source/__init__.py",
    "source/unpack.py",
    "source/registry_api.py",
    "agent/__init__.py",
    "agent/main.py",
    "agent/system.py",
    "agent/config.py",
    "agent/stages.py",
    "agent/disks.py",
    "agent/images.py",
    "agent/bootstate.py",
    "agent/install.py",
    "agent/upgrade.py",
    "agent/reset.py",
    "agent/trusted.py",
)
# Where they go in the image; /usr/bin/kairos-agent (overlays/) puts it on python3's path.
IMAGE_DIR = "usr/lib/kairos/python"


def agent_files() -> dict[str, Path]:
    """Image path -> file of this package: what the framework layer puts in every image."""
    package = Path(__file__).resolve().parent.parent
    return {f"{IMAGE_DIR}/kairos_build/{rel}": package / rel for rel in MODULES}
