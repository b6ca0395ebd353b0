"""What an EFI system partition holds: the image's own signed chain where it has one.

Under Secure Boot the firmware starts only what its keys trust: the distro's shim (signed by
Microsoft's UEFI CA), which starts the distro's grub (signed by the distro, checked against
the key built into shim), which starts the distro's kernel (checked the same way). So the ESP
gets the image's shim as the removable-media path `EFI/BOOT/BOOTX64.EFI`, its signed grub
beside it under the name that shim starts, and MokManager. A signed grub cannot take our
early config: it reads `grub.cfg` from the prefix built into it (`/EFI/debian` for Debian's
grubx64, `/boot/grub` for its CD image gcdx64) or from its own folder, so a small config that
finds the real menu by filesystem label goes to each of those places.

An image without a signed chain (Alpine; a base without the packages) boots through a grub
EFI binary made from its own grub modules, unsigned; an image without those through the build
host's. Each says so in one log line: such an artifact does not boot with Secure Boot on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kairos_build.core import rootfs
from kairos_build.core.flavors import SecureBoot
from kairos_build.core.log import log
from kairos_build.core.pe import grub_prefix
from kairos_build.disk.grub import early_config, grub_dir, make_grub_image

REMOVABLE_DIR = "EFI/BOOT"
REMOVABLE_LOADER = f"{REMOVABLE_DIR}/BOOTX64.EFI"


@dataclass(frozen=True)
class SignedChain:
    shim: Path
    grub: Path
    mok_manager: Path | None
    shim_loads: str
    mok_name: str


def find_file(root: Path, candidates: tuple[str, ...]) -> Path | None:
    """The first of `candidates` that is a regular file inside the rootfs (links resolved in it)."""
    return next((path for rel in candidates if (path := rootfs.regular_file(root, rel))), None)


def signed_chain(root: Path, secure_boot: SecureBoot | None, cd: bool) -> SignedChain | None:
    """The image's shim and signed grub (the CD build when `cd`), or None when it lacks either."""
    if secure_boot is None:
        return None
    shim = find_file(root, secure_boot.shim)
    grub = find_file(root, secure_boot.grub_cd if cd else secure_boot.grub)
    if shim is None or grub is None:
        return None
    return SignedChain(
        shim, grub, find_file(root, secure_boot.mok_manager), secure_boot.shim_loads, secure_boot.mok_name
    )


def config_folders(prefix: str | None) -> list[str]:
    """ESP folders a signed grub reads grub.cfg from: its own folder (where `$cmdpath` points)
    and its built-in prefix when that is a path on the partition it started from."""
    folders = [REMOVABLE_DIR]
    if prefix and prefix.startswith("/"):  # not "(memdisk)/..." or "($root)/..."
        folder = prefix.strip("/")
        if folder and ".." not in folder.split("/") and folder not in folders:
            folders.append(folder)
    return folders


def esp_files(
    root: Path, secure_boot: SecureBoot | None, label: str, workdir: Path, cd: bool
) -> dict[str, Path]:
    """ESP path -> host file: the loaders that boot the system whose menu lives on the
    filesystem labelled `label` (at /boot/grub/grub.cfg). `cd`: the live medium's grub."""
    stub = workdir / f"find-{label}.cfg"
    stub.write_text(early_config(label))
    chain = signed_chain(root, secure_boot, cd)
    if chain is not None:
        log.info(
            "  UEFI: the image's signed shim /%s -> grub /%s",
            chain.shim.relative_to(root),
            chain.grub.relative_to(root),
        )
        files = {REMOVABLE_LOADER: chain.shim, f"{REMOVABLE_DIR}/{chain.shim_loads}": chain.grub}
        if chain.mok_manager is not None:
            files[f"{REMOVABLE_DIR}/{chain.mok_name}"] = chain.mok_manager
        for folder in config_folders(grub_prefix(chain.grub)):
            files[f"{folder}/grub.cfg"] = stub
        return files
    log.warning(
        "  UEFI: the image has no signed shim and grub%s: an unsigned grub boots it, not under Secure Boot",
        "" if secure_boot else " (its flavor names none)",
    )
    loader = workdir / f"grub-{label}.efi"
    make_grub_image("x86_64-efi", loader, label, workdir, grub_dir(root, "x86_64-efi"))
    return {REMOVABLE_LOADER: loader}
