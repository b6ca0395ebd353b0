"""GRUB boot images made with grub-mkimage (no grub-install, no mounted target), from the
image's own grub modules; the build host's are the fallback for an image without them."""

from __future__ import annotations

import re
from pathlib import Path

from kairos_build.core import rootfs
from kairos_build.core.log import log
from kairos_build.core.tools import require_file, run

GRUB_LIB = Path("/usr/lib/grub")
# Where each family's grub packages put a platform's modules (SUSE: grub2-<platform>).
_IMAGE_GRUB_DIRS = ("usr/lib/grub/{platform}", "usr/share/grub2/{platform}", "usr/lib/grub2/{platform}")

# Everything the menus use must be built in: a BIOS CD cannot load modules from an ISO whose
# layout it does not know yet (kairos#4758 was a missing `smbios`).
COMMON_MODULES = [
    "normal",
    "configfile",
    "linux",
    "search",
    "search_label",
    "search_fs_file",
    "search_fs_uuid",
    "iso9660",
    "fat",
    "ext2",
    "squash4",
    "part_gpt",
    "part_msdos",
    "echo",
    "test",
    "serial",
    "terminal",
    "gzio",
    "xzio",
    "zstd",
    "loadenv",
    "regexp",
    "sleep",
    "smbios",
    "all_video",
    "font",
    "gfxterm",
    "halt",
    "reboot",
    "cat",
    "ls",
    "true",
    "chain",
    "loopback",
]
PLATFORM_MODULES = {"i386-pc": ["biosdisk", "cpuid"], "x86_64-efi": ["efi_gop", "efi_uga"]}
# What the BIOS CD image needs from the host: the cdboot.img grub-mkimage prepends.
PLATFORM_CHECK_FILE = {"i386-pc": "cdboot.img", "x86_64-efi": "linux.mod"}


_GRUB_SAFE = re.compile(r"^[A-Za-z0-9._,:=/+@%-]+$")


def grub_quote(word: str) -> str:
    """One kernel argument as a single grub.cfg word: a user's argument may hold spaces,
    quotes or `;`, which grub would otherwise read as its own syntax."""
    if _GRUB_SAFE.match(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def early_config(label: str) -> str:
    """Embedded in the image: find the boot medium by its label, then read its grub.cfg."""
    return (
        f"search --no-floppy --label --set=root {label}\n"
        "set prefix=($root)/boot/grub\n"
        "configfile ($root)/boot/grub/grub.cfg\n"
    )


def image_grub_dir(root: Path, platform: str) -> Path | None:
    """The image's own grub modules for `platform` (resolved inside the rootfs), or None.

    grub-mkimage and we read files from it on the host: a folder holding any symlink (which
    could point at a host file and put it into an artifact) is not used."""
    for pattern in _IMAGE_GRUB_DIRS:
        folder = pattern.format(platform=platform)
        if (
            rootfs.regular_file(root, f"{folder}/kernel.img") is None
            or rootfs.regular_file(root, f"{folder}/{PLATFORM_CHECK_FILE[platform]}") is None
        ):
            continue
        directory = rootfs.resolve_in(root, folder)
        if not any(entry.is_symlink() for entry in directory.iterdir()):
            return directory
        log.warning("  the image's %s holds symlinks: not used to make boot images", f"/{folder}")
    return None


def grub_dir(root: Path, platform: str) -> Path:
    """The grub modules a boot image for `platform` is made from: the image's own, else (one
    log line) the build host's."""
    if (directory := image_grub_dir(root, platform)) is not None:
        return directory
    log.warning(
        "  the image has no grub %s modules: using the build host's grub for %s boots",
        platform,
        "BIOS" if platform == "i386-pc" else "UEFI",
    )
    require_file(str(GRUB_LIB / platform / PLATFORM_CHECK_FILE[platform]))
    return GRUB_LIB / platform


def grub_modules(directory: Path, platform: str) -> list[str]:
    """The modules of our menus that `directory` has (an older grub may lack a new one)."""
    wanted = COMMON_MODULES + PLATFORM_MODULES[platform]
    return [m for m in wanted if (directory / f"{m}.mod").is_file()]


def make_grub_image(
    platform: str, output: Path, label: str, workdir: Path, directory: Path, image_format: str | None = None
) -> None:
    """A BIOS El Torito image (i386-pc), a BIOS disk core (i386-pc, format i386-pc) or an EFI
    binary (x86_64-efi) from the modules in `directory`; it finds the medium labelled `label`."""
    formats = {"i386-pc": "i386-pc-eltorito", "x86_64-efi": "x86_64-efi"}
    if platform not in formats:
        raise ValueError(f"grub platform {platform} is not supported")
    config = workdir / f"early-{platform}.cfg"
    config.write_text(early_config(label))
    run(
        [
            "grub-mkimage",
            "--directory",
            str(directory),
            "--format",
            image_format or formats[platform],
            "--output",
            str(output),
            "--prefix",
            "/boot/grub",
            "--config",
            str(config),
            *grub_modules(directory, platform),
        ]
    )
