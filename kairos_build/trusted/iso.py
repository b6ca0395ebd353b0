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

from kairos_build.core.log import log, step
from kairos_build.core.templates import render
from kairos_build.disk.fat import make_fat_image
from kairos_build.disk.raw_disk import CONSOLES
from kairos_build.trusted.disk import UKI_DIR, EspInputs, image_id, image_path, loader_entry
from kairos_build.trusted.keys import SigningKeys
from kairos_build.trusted.uki import SYSTEMD_BOOT, assemble_uki, image_file, sign_efi
from kairos_build.trusted.verity import VerityImage

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


def live_esp(
    inputs: EspInputs,
    keys: SigningKeys,
    verity: VerityImage,
    label: str,
    with_config: bool,
    work: Path,
    epoch: int,
) -> Path:
    """The El Torito ESP image: signed systemd-boot, the signed live UKI, its menu, our keys.
    `with_config`: the medium carries /config.yaml for the live system to apply."""
    work.mkdir(exist_ok=True)
    name = f"live-{image_id(verity)}"
    cmdline = live_cmdline(label, verity, inputs.extra, with_config)
    unsigned = assemble_uki(inputs.rootfs, work, name, cmdline, keys)
    uki = sign_efi(unsigned, work / f"{name}.efi", keys.db_key, keys.db_cert)
    unsigned.unlink()
    boot = image_file(inputs.rootfs, SYSTEMD_BOOT, "systemd-boot-efi")
    entry, loader = work / "live.conf", work / "loader.conf"
    entry.write_text(
        loader_entry(
            f"Kairos {inputs.pretty_name} {inputs.version} live",
            1,
            inputs.version,
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
        make_fat_image(esp, files, label="COS_GRUB", epoch=epoch)
    log.info("  %s.efi: %d MiB", name, -(-uki.stat().st_size // MiB))
    return esp
