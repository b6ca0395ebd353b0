"""Build the initramfs inside the rootfs with the flavor's own tool."""

from __future__ import annotations

from pathlib import Path

from kairos_build.core.errors import InputError

KVER = "{kver}"  # stands for the kernel version (the /lib/modules name) in command templates

# Where each tool reads its configuration and modules (dracut's modules.d holds ours): the
# framework files under these paths are the initramfs stage's inputs; the others are not.
_CONFIG_PATHS = {
    "dracut": ("etc/dracut.conf", "etc/dracut.conf.d", "usr/lib/dracut"),
    "mkinitfs": ("etc/mkinitfs", "usr/share/mkinitfs"),
}


def initramfs_command(tool: str, initrd: str, keep: str | None = None) -> tuple[str, ...]:
    """The command that builds `initrd` (a rootfs path with {kver}) for kernel {kver}; with
    `keep` (a folder of the rootfs), the tool leaves its staging folder under it
    (staging_folder finds it).

    Its options (not host-only, dmsquash-live, zstd for dracut; features for mkinitfs) come
    from overlays/, so a later kernel update inside the image builds the same kind of initramfs.
    """
    target = f"/{initrd}"
    if tool == "dracut":
        kept = ("--keep", "--tmpdir", keep) if keep else ()
        return ("dracut", "--force", *kept, "--kver", KVER, target)
    if tool == "mkinitfs":
        kept = ("-k", "-t", f"{keep}/staging") if keep else ()
        return ("mkinitfs", *kept, "-o", target, KVER)
    raise InputError(f"initramfs tool {tool!r} is not supported", hint="use dracut or mkinitfs")


def staging_folder(tool: str, keep: Path) -> Path | None:
    """The staging folder a tool run with initramfs_command(keep=...) left under `keep`."""
    found = sorted(keep.glob("dracut.*/initramfs")) if tool == "dracut" else [keep / "staging"]
    return next((f for f in found if f.is_dir() and not f.is_symlink()), None)


def initramfs_paths(tool: str) -> tuple[str, ...]:
    """The rootfs paths `tool` reads its configuration and modules from."""
    if tool not in _CONFIG_PATHS:
        raise InputError(f"initramfs tool {tool!r} is not supported", hint="use dracut or mkinitfs")
    return _CONFIG_PATHS[tool]


def with_kernel(argv: tuple[str, ...], kernel_version: str) -> tuple[str, ...]:
    return tuple(arg.replace(KVER, kernel_version) for arg in argv)
