"""The Trusted Boot disk: systemd-boot and signed UKIs on the ESP, verified root images.

    COS_GRUB (ESP)   EFI/BOOT/BOOTX64.EFI          systemd-boot, signed with our db key
                     EFI/kairos/{system,recovery}-ID.efi   signed UKIs (ID: of the root hash)
                     loader/loader.conf, loader/entries/{active,passive,recovery,statereset}.conf
                     loader/keys/auto/{PK,KEK,db}.auth   enrolled by systemd-boot in setup mode
    COS_OEM          the node's cloud-config: plain here, sealed like COS_PERSISTENT on the
                     first boot, its files kept
    COS_RECOVERY     cOS/system-ID.img             the root image + its verity tree
                     kairos/trusted/  its system UKI and loader entries, for a reset
    COS_STATE        cOS/system-ID.img             the same: active and passive at first
    COS_PERSISTENT   what the node keeps: blank here, LUKS2 sealed to the node's TPM on
                     its first boot, opened only under a UKI our PCR key signed

Every UKI's signed command line names its image and that image's root hash, so the firmware's
check of the UKI extends to every byte of the OS. Files are named by the root hash, so an
upgrade only adds a UKI and an image and points the `active` entry at them (the previous ones
become `passive`), and nothing that a signed command line names is ever renamed. UEFI only:
Trusted Boot has no BIOS path.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kairos_build.core.log import log, step
from kairos_build.core.templates import render
from kairos_build.disk.fat import make_fat_in_disk
from kairos_build.disk.gpt import create_disk
from kairos_build.disk.layout import Layout, MiB, align_up, plan_layout
from kairos_build.disk.raw_disk import CONSOLES, link_or_copy, stage, volume_id, write_ext4
from kairos_build.trusted.keys import SigningKeys, load_keys
from kairos_build.trusted.uki import SYSTEMD_BOOT, assemble_uki, image_file, sign_efi
from kairos_build.trusted.verity import VerityImage, make_verity_image

if TYPE_CHECKING:
    from kairos_build.exporters.base import ExportContext

UKI_DIR = "EFI/kairos"
RESET_KIT = "kairos/trusted"  # on COS_RECOVERY
# Room for the four UKIs of today and the new set an upgrade writes beside them.
DEFAULT_ESP = 512 * MiB


@dataclass(frozen=True)
class Uki:
    """A UKI and the image its signed command line pins (trusted/verity.py)."""

    kind: str  # "system" (COS_STATE, booted as active or passive) or "recovery"
    label: str  # the partition holding its image

    def name(self, verity: VerityImage) -> str:
        return f"{self.kind}-{image_id(verity)}"

    def cmdline(self, verity: VerityImage, extra: tuple[str, ...]) -> str:
        # No kairos.entry= on a system UKI: the same file is active before an upgrade and
        # passive after it; the role booted is the loader entry (LoaderEntrySelected).
        role = ["kairos.entry=recovery"] if self.kind == "recovery" else []
        words = [
            f"root=LABEL={self.label}",
            "ro",
            *CONSOLES,
            f"cos-img/filename={image_path(verity)}",
            *verity.kernel_args(),
            "rd.kairos.encrypt=tpm2",
            *role,
            "panic=5",
            "rd.shell=0",
            "rd.emergency=reboot",
            *extra,
        ]
        return " ".join(words) + "\n"


SYSTEM = Uki("system", "COS_STATE")
RECOVERY = Uki("recovery", "COS_RECOVERY")
# Loader entry -> the UKI it starts, in menu order. A fresh disk has one system image, which
# is both active and passive; an upgrade points active at the new one.
ENTRIES = (
    ("active", SYSTEM, ""),
    ("passive", SYSTEM, " (fallback)"),
    ("recovery", RECOVERY, " recovery"),
    ("statereset", RECOVERY, " reset"),
)


def image_id(verity: VerityImage) -> str:
    """Images and UKIs are named by their root hash: an upgrade adds files, renames none."""
    return verity.root_hash[:16]


def image_path(verity: VerityImage) -> str:
    return f"/cOS/system-{image_id(verity)}.img"


def loader_entry(title: str, number: int, version: str, efi: str) -> str:
    return render(
        "systemd-boot/entry.conf.j2", title=title, sort_key=f"kairos-{number}", version=version, efi=efi
    )


def signed_ukis(context: ExportContext, keys: SigningKeys, verity: VerityImage) -> dict[str, Path]:
    """ESP path -> host file of the system and recovery UKIs, signed."""
    work = context.workdir / "trusted-ukis"
    work.mkdir(exist_ok=True)
    made: dict[str, Path] = {}
    for uki in (SYSTEM, RECOVERY):
        name = uki.name(verity)
        cmdline = uki.cmdline(verity, context.config.extra_kernel_args)
        unsigned = assemble_uki(context.rootfs, work, name, cmdline, keys)
        signed = sign_efi(unsigned, work / f"{name}.efi", keys.db_key, keys.db_cert)
        unsigned.unlink()
        log.info("  %s.efi: %d MiB", name, -(-signed.stat().st_size // MiB))
        made[f"{UKI_DIR}/{name}.efi"] = signed
    return made


ESP_MADE = "trusted-esp:"  # context.made's keys for the files esp_files made, by ESP path


def esp_files(context: ExportContext, keys: SigningKeys, verity: VerityImage) -> dict[str, Path]:
    """ESP path -> host file: signed systemd-boot, the signed UKIs, the menu, the keys to enroll.
    Made once per build: every format of it carries the same signed files (a signature holds
    its signing time, so signing again gives other bytes)."""
    made = {
        path.removeprefix(ESP_MADE): file for path, file in context.made.items() if path.startswith(ESP_MADE)
    }
    if made:
        return made
    files = _make_esp_files(context, keys, verity)
    context.made.update({ESP_MADE + path: file for path, file in files.items()})
    return files


def _make_esp_files(context: ExportContext, keys: SigningKeys, verity: VerityImage) -> dict[str, Path]:
    config = context.config
    work = context.workdir / "trusted-esp"
    work.mkdir(exist_ok=True)
    title = f"Kairos {config.flavor.pretty_name} {config.version}"
    boot = image_file(context.rootfs, SYSTEMD_BOOT, "systemd-boot-efi")
    files = {
        "EFI/BOOT/BOOTX64.EFI": sign_efi(boot, work / "BOOTX64.EFI", keys.db_key, keys.db_cert),
        **signed_ukis(context, keys, verity),
    }
    for number, (role, uki, suffix) in enumerate(ENTRIES, start=1):
        conf = work / f"{role}.conf"
        conf.write_text(
            loader_entry(title + suffix, number, config.version, f"/{UKI_DIR}/{uki.name(verity)}.efi")
        )
        files[f"loader/entries/{role}.conf"] = conf
    loader = work / "loader.conf"
    loader.write_text(render("systemd-boot/loader.conf.j2", timeout=3, enroll="if-safe"))
    files["loader/loader.conf"] = loader
    for name, auth in keys.auto_enroll.items():
        files[f"loader/keys/auto/{name}"] = auth
    return files


def root_image(context: ExportContext) -> VerityImage:
    """The build's squashfs with its verity tree, made once per build."""
    return make_verity_image(context.squashfs(), context.workdir / "root.verity.img", context.rootfs_key)


def make_trusted_disk(context: ExportContext, output: Path) -> Layout:
    """Write the whole Trusted Boot disk to `output`; returns the layout it used."""
    config, work, seed = context.config, context.workdir, context.rootfs_key
    assert config.keys is not None  # BuildConfig refuses trusted without keys
    keys = load_keys(config.keys, config.cache_dir)
    verity = root_image(context)
    image_bytes = verity.path.stat().st_size
    # plan_layout sizes COS_STATE for three images (active, passive, an upgrade) of image_size.
    options = replace(
        config.disk,
        firmware="uefi",
        image_size=align_up(image_bytes * 11 // 10, 16 * MiB),
        sizes=(("efi", DEFAULT_ESP), *config.disk.sizes),
    )
    layout = plan_layout(options, image_bytes, image_bytes, seed)
    log.info("  layout: %s; disk %d MiB", layout.describe(), layout.disk_size >> 20)
    create_disk(output, layout)
    parts = {p.name: p for p in layout.partitions}
    loaders = esp_files(context, keys, verity)

    image = image_path(verity).lstrip("/")
    state = stage(work, "state")
    link_or_copy(verity.path, state / image)
    write_ext4(output, parts["state"], seed, state, context.epoch)
    # COS_RECOVERY: its image, and the system UKI of that image for a reset to lay back.
    recovery = stage(work, "recovery")
    link_or_copy(verity.path, recovery / image)
    system = f"{UKI_DIR}/{SYSTEM.name(verity)}.efi"
    (recovery / RESET_KIT).mkdir(parents=True)
    for path in (system, "loader/entries/active.conf", "loader/entries/passive.conf"):
        shutil.copyfile(loaders[path], recovery / RESET_KIT / Path(path).name)
    write_ext4(output, parts["recovery"], seed, recovery, context.epoch)
    oem = stage(work, "oem")
    if config.cloud_config is not None:
        shutil.copyfile(config.cloud_config, oem / "90_custom.yaml")
    write_ext4(output, parts["oem"], seed, oem, context.epoch)
    # COS_PERSISTENT stays blank: the node's first boot seals it to its own TPM (LUKS2, see
    # the kairos-immutable dracut module), which no build can do.
    with step("writing the ESP (systemd-boot, the signed UKIs, the keys to enroll)"):
        make_fat_in_disk(
            output, parts["efi"].start, parts["efi"].size, loaders, "COS_GRUB", volume_id(seed), context.epoch
        )
    return layout
