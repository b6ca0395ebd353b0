"""The Trusted Boot live ISO (UEFI only): systemd-boot and a signed live UKI on its El Torito
ESP, the verified root image on the ISO, and the installed disk's ESP as the install kit.

The live UKI boots the same dm-verity image an installed node boots (trusted/verity.py), from
the ISO itself: `root=LABEL=COS_LIVE cos-img/filename=/cOS/system-ID.img` with the root hash,
through the kairos-immutable initramfs module, no dmsquash-live. So the live system is
verified like the installed one, and `kairos-agent install` copies files that were signed at
build time, never makes a boot file. The ESP also carries `loader/keys/auto`: a machine in
setup mode enrolls our keys from the live medium already.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kairos_build.core.log import log, step
from kairos_build.core.templates import render
from kairos_build.disk import kit
from kairos_build.disk.fat import make_fat_image
from kairos_build.disk.raw_disk import CONSOLES
from kairos_build.trusted.disk import UKI_DIR, esp_files, image_id, image_path, loader_entry, root_image
from kairos_build.trusted.keys import SigningKeys
from kairos_build.trusted.uki import SYSTEMD_BOOT, assemble_uki, image_file, sign_efi
from kairos_build.trusted.verity import VerityImage

if TYPE_CHECKING:
    from kairos_build.exporters.base import ExportContext

MiB = 1 << 20


def live_cmdline(label: str, verity: VerityImage, extra: tuple[str, ...], config: bool) -> str:
    words = [
        f"root=LABEL={label}",
        "ro",
        *CONSOLES,
        f"cos-img/filename={image_path(verity)}",
        *verity.kernel_args(),
        "kairos.entry=live",
        "rd.kairos.persistent=none",
        *(["kairos.live_config=/config.yaml"] if config else []),
        "panic=5",
        "rd.shell=0",
        "rd.emergency=reboot",
        *extra,
    ]
    return " ".join(words) + "\n"


def live_esp(context: ExportContext, keys: SigningKeys, verity: VerityImage, label: str) -> Path:
    """The El Torito ESP image: signed systemd-boot, the signed live UKI, its menu, our keys."""
    config, work = context.config, context.workdir / "trusted-live"
    work.mkdir(exist_ok=True)
    name = f"live-{image_id(verity)}"
    cmdline = live_cmdline(label, verity, config.extra_kernel_args, config.cloud_config is not None)
    unsigned = assemble_uki(context.rootfs, work, name, cmdline, keys)
    uki = sign_efi(unsigned, work / f"{name}.efi", keys.db_key, keys.db_cert)
    unsigned.unlink()
    boot = image_file(context.rootfs, SYSTEMD_BOOT, "systemd-boot-efi")
    entry, loader = work / "live.conf", work / "loader.conf"
    entry.write_text(
        loader_entry(
            f"Kairos {config.flavor.pretty_name} {config.version} live",
            1,
            config.version,
            f"/{UKI_DIR}/{name}.efi",
        )
    )
    loader.write_text(render("systemd-boot/loader.conf.j2", timeout=3, enroll="if-safe"))
    files = {
        "EFI/BOOT/BOOTX64.EFI": sign_efi(boot, work / "BOOTX64.EFI", keys.db_key, keys.db_cert),
        f"{UKI_DIR}/{name}.efi": uki,
        "loader/loader.conf": loader,
        "loader/entries/live.conf": entry,
        **{f"loader/keys/auto/{n}": path for n, path in keys.auto_enroll.items()},
    }
    esp = work / "uefi.img"
    with step("making the UEFI boot image (systemd-boot, the live UKI)"):
        make_fat_image(esp, files, label="COS_GRUB", epoch=context.epoch)
    log.info("  %s.efi: %d MiB", name, -(-uki.stat().st_size // MiB))
    return esp


def trusted_iso_files(context: ExportContext, keys: SigningKeys, label: str) -> dict[str, Path]:
    """ISO path -> host file of a Trusted Boot ISO."""
    verity = root_image(context)
    files = {"/boot/uefi.img": live_esp(context, keys, verity, label), image_path(verity): verity.path}
    # What kairos-agent install lays down: an installed disk's ESP, made by the same code.
    files.update(
        {
            f"/{kit.KIT_DIR}/{kit.ESP_DIR}/{path}": source
            for path, source in esp_files(context, keys, verity).items()
        }
    )
    if context.config.cloud_config is not None:
        files["/config.yaml"] = context.config.cloud_config
    return files
