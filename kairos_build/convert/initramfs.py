"""Build the initramfs inside the rootfs with the flavor's own tool."""

from __future__ import annotations

from kairos_build.errors import InputError

KVER = "{kver}"  # stands for the kernel version (the /lib/modules name) in command templates


def initramfs_command(tool: str, initrd: str) -> tuple[str, ...]:
    """The command that builds `initrd` (a rootfs path with {kver}) for kernel {kver}.

    Its options (not host-only, dmsquash-live, zstd for dracut; features for mkinitfs) come
    from overlays/, so a later kernel update inside the image builds the same kind of initramfs.
    """
    target = f"/{initrd}"
    if tool == "dracut":
        return ("dracut", "--force", "--kver", KVER, target)
    if tool == "mkinitfs":
        return ("mkinitfs", "-o", target, KVER)
    raise InputError(f"initramfs tool {tool!r} is not supported", hint="use dracut or mkinitfs")


def with_kernel(argv: tuple[str, ...], kernel_version: str) -> tuple[str, ...]:
    return tuple(arg.replace(KVER, kernel_version) for arg in argv)
