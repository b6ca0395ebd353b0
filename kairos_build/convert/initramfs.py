"""Build the initramfs inside the rootfs with the flavor's own tool."""

from __future__ import annotations

from pathlib import Path

from kairos_build.convert.chroot import run_in_root
from kairos_build.errors import InputError


def initrd_name(kernel_version: str) -> str:
    return f"initrd.img-{kernel_version}"  # the name the distro's kernel hooks use too


def build_initramfs(root: Path, tool: str, kernel_version: str) -> str:
    """Build the initramfs for `kernel_version`; return its file name under /boot.

    Its options (not host-only, dmsquash-live, zstd) come from overlays/, so a later kernel
    update inside the image builds the same kind of initramfs.
    """
    if tool != "dracut":
        raise InputError(f"initramfs tool {tool!r} is not supported yet", hint="use dracut")
    name = initrd_name(kernel_version)
    run_in_root(root, ["dracut", "--force", "--kver", kernel_version, f"/boot/{name}"])
    return name
