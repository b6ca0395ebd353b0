"""Netboot: the kernel, initrd and rootfs.squashfs of the live ISO in a directory, with an
iPXE script that boots them over HTTP from wherever the directory is served."""

from __future__ import annotations

import shutil
from pathlib import Path

from kairos_build.core.log import step
from kairos_build.core.templates import render
from kairos_build.exporters.base import ExportContext

SCRIPT = "boot.ipxe"
# ${kairos-dir} is set by the script (templates/boot.ipxe.j2) and expanded by iPXE.
SQUASHFS_URL = "${kairos-dir}/rootfs.squashfs"
CONFIG_URL = "${kairos-dir}/config.yaml"


def netboot_cmdline(squashfs_url: str, extra: tuple[str, ...] = ()) -> str:
    """dracut livenet: download the squashfs over the network brought up by DHCP, then boot it
    as dmsquash-live does from a CD; ttyS0 last so it is /dev/console (logs, login)."""
    return " ".join(
        [
            f"root=live:{squashfs_url}",
            "rd.live.overlay.overlayfs=1",
            "ip=dhcp",
            "rd.neednet=1",
            "console=tty1",
            "console=ttyS0,115200",
            *extra,
        ]
    )


def render_script(title: str, extra: tuple[str, ...] = (), config_url: str | None = None) -> str:
    """boot.ipxe; `config_url` passes a cloud-config to the booted system (Kairos's config_url)."""
    args = (*extra, f"config_url={config_url}") if config_url else extra
    return render("boot.ipxe.j2", title=title, cmdline=netboot_cmdline(SQUASHFS_URL, args))


class NetbootExporter:
    """Build a netboot directory: kernel, initrd, rootfs.squashfs and an iPXE script (HTTP)."""

    name = "netboot"
    extension = "netboot"  # a directory: NAME-netboot/ (kairos_build.pipelines.build.export_artifact)
    # The same system as the live ISO's, and installable from it the same way: iPXE starts the
    # kernel through its EFI stub under UEFI, and the installed system boots with grub.
    boot_mode = "secureboot"
    tools: tuple[str, ...] = ("mksquashfs",)
    files: tuple[str, ...] = ()

    def export(self, context: ExportContext, output: Path) -> None:
        config = context.config
        parts = {
            "vmlinuz": context.kernel(),
            "initrd": context.initrd(),
            "rootfs.squashfs": context.squashfs(),
        }
        if config.cloud_config is not None:
            parts["config.yaml"] = config.cloud_config
        output.mkdir()
        with step("copying the kernel, initrd and squashfs"):
            # Copies, not links into the cache: a served file edited in place must not change
            # the cached squashfs that later builds reuse.
            for name, source in parts.items():
                shutil.copyfile(source, output / name)
        (output / SCRIPT).write_text(
            render_script(
                f"Kairos {config.flavor.pretty_name}",
                config.extra_kernel_args,
                CONFIG_URL if config.cloud_config is not None else None,
            )
        )
