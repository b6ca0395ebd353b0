"""The Trusted Boot disk: systemd-boot and signed UKIs on the ESP, verified root images.

    COS_GRUB (ESP)   EFI/BOOT/BOOTX64.EFI          systemd-boot, signed with our db key
                     EFI/kairos/{active,passive,recovery,statereset}.efi   signed UKIs
                     loader/loader.conf, loader/entries/*.conf
                     loader/keys/auto/{PK,KEK,db}.auth   enrolled by systemd-boot in setup mode
    COS_OEM          the node's cloud-config
    COS_RECOVERY     cOS/recovery.squashfs         the root image + its verity tree
    COS_STATE        cOS/active.img, cOS/passive.img   the same, for active and passive
    COS_PERSISTENT   what the node keeps: blank here, LUKS2 sealed to the node's TPM on
                     its first boot, opened only under a UKI our PCR key signed

Every UKI's signed command line names its image and that image's root hash, so the firmware's
check of the UKI extends to every byte of the OS. UEFI only: Trusted Boot has no BIOS path.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kairos_build.disk.fat import make_fat_in_disk
from kairos_build.disk.gpt import create_disk
from kairos_build.disk.layout import MiB, Layout, align_up, plan_layout
from kairos_build.disk.raw_disk import CONSOLES, link_or_copy, stage, volume_id, write_ext4
from kairos_build.log import log, step
from kairos_build.templates import render
from kairos_build.trusted.keys import SigningKeys, load_keys
from kairos_build.trusted.uki import SYSTEMD_BOOT, assemble_uki, image_file, sign_efi
from kairos_build.trusted.verity import VerityImage, make_verity_image

if TYPE_CHECKING:
    from kairos_build.exporters.base import ExportContext

UKI_DIR = "EFI/kairos"
# Room for the four UKIs of today and the new set an upgrade writes beside them.
DEFAULT_ESP = 512 * MiB


@dataclass(frozen=True)
class Entry:
    """One boot entry: a UKI and the loader entry that starts it."""

    role: str  # active, passive, recovery, statereset: also kairos.entry=
    title: str
    label: str  # the partition holding its image
    image: str  # the image's path on that partition

    def cmdline(self, verity: VerityImage, extra: tuple[str, ...]) -> str:
        words = [f"root=LABEL={self.label}", "ro", *CONSOLES, f"cos-img/filename={self.image}",
                 *verity.kernel_args(), "rd.kairos.encrypt=tpm2", f"kairos.entry={self.role}",
                 "panic=5", "rd.shell=0",
                 "rd.emergency=reboot", *extra]
        return " ".join(words) + "\n"


def entries(title: str) -> tuple[Entry, ...]:
    return (Entry("active", title, "COS_STATE", "/cOS/active.img"),
            Entry("passive", f"{title} (fallback)", "COS_STATE", "/cOS/passive.img"),
            Entry("recovery", f"{title} recovery", "COS_RECOVERY", "/cOS/recovery.squashfs"),
            Entry("statereset", f"{title} reset", "COS_RECOVERY", "/cOS/recovery.squashfs"))


def esp_files(context: ExportContext, keys: SigningKeys, verity: VerityImage) -> dict[str, Path]:
    """ESP path -> host file: signed systemd-boot, the signed UKIs, the menu, the keys to enroll."""
    config, rootfs = context.config, context.rootfs
    work = context.workdir / "trusted-esp"
    work.mkdir(exist_ok=True)
    title = f"Kairos {config.flavor.pretty_name} {config.version}"
    files: dict[str, Path] = {}
    boot = image_file(rootfs, SYSTEMD_BOOT, "systemd-boot-efi")
    files["EFI/BOOT/BOOTX64.EFI"] = sign_efi(boot, work / "BOOTX64.EFI", keys.db_key, keys.db_cert)
    for number, entry in enumerate(entries(title), start=1):
        unsigned = assemble_uki(rootfs, work, entry.role,
                                entry.cmdline(verity, config.extra_kernel_args), keys)
        signed = sign_efi(unsigned, work / f"{entry.role}.efi", keys.db_key, keys.db_cert)
        unsigned.unlink()
        log.info("  %s.efi: %d MiB", entry.role, -(-signed.stat().st_size // MiB))
        files[f"{UKI_DIR}/{entry.role}.efi"] = signed
        conf = work / f"{entry.role}.conf"
        conf.write_text(render("systemd-boot/entry.conf.j2", title=entry.title,
                               sort_key=f"kairos-{number}", version=config.version,
                               efi=f"/{UKI_DIR}/{entry.role}.efi"))
        files[f"loader/entries/{entry.role}.conf"] = conf
    loader = work / "loader.conf"
    loader.write_text(render("systemd-boot/loader.conf.j2", default="active.conf", timeout=3,
                             enroll="if-safe"))
    files["loader/loader.conf"] = loader
    for name, auth in keys.auto_enroll.items():
        files[f"loader/keys/auto/{name}"] = auth
    return files


def root_image(context: ExportContext) -> VerityImage:
    """The build's squashfs with its verity tree, made once per build."""
    return make_verity_image(context.squashfs(), context.workdir / "root.verity.img",
                             context.rootfs_key)


def make_trusted_disk(context: ExportContext, output: Path) -> Layout:
    """Write the whole Trusted Boot disk to `output`; returns the layout it used."""
    config, work, seed = context.config, context.workdir, context.rootfs_key
    assert config.keys is not None  # BuildConfig refuses trusted without keys
    keys = load_keys(config.keys, config.cache_dir)
    verity = root_image(context)
    image_bytes = verity.path.stat().st_size
    # plan_layout sizes COS_STATE for three images (active, passive, an upgrade) of image_size.
    options = replace(config.disk, firmware="uefi",
                      image_size=align_up(image_bytes * 11 // 10, 16 * MiB),
                      sizes=(("efi", DEFAULT_ESP), *config.disk.sizes))
    layout = plan_layout(options, image_bytes, image_bytes, seed)
    log.info("  layout: %s; disk %d MiB", layout.describe(), layout.disk_size >> 20)
    create_disk(output, layout)
    parts = {p.name: p for p in layout.partitions}
    loaders = esp_files(context, keys, verity)

    state = stage(work, "state")
    link_or_copy(verity.path, state / "cOS" / "active.img")
    link_or_copy(verity.path, state / "cOS" / "passive.img")
    write_ext4(output, parts["state"], seed, state, context.epoch)
    recovery = stage(work, "recovery")
    link_or_copy(verity.path, recovery / "cOS" / "recovery.squashfs")
    write_ext4(output, parts["recovery"], seed, recovery, context.epoch)
    oem = stage(work, "oem")
    if config.cloud_config is not None:
        shutil.copyfile(config.cloud_config, oem / "90_custom.yaml")
    write_ext4(output, parts["oem"], seed, oem, context.epoch)
    # COS_PERSISTENT stays blank: the node's first boot seals it to its own TPM (LUKS2, see
    # the kairos-immutable dracut module), which no build can do.
    with step("writing the ESP (systemd-boot, the signed UKIs, the keys to enroll)"):
        make_fat_in_disk(output, parts["efi"].start, parts["efi"].size, loaders, "COS_GRUB",
                         volume_id(seed), context.epoch)
    return layout
