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

from kairos_build.core.log import log, step
from kairos_build.core.templates import render
from kairos_build.disk.fat import make_fat_in_disk
from kairos_build.disk.gpt import create_disk
from kairos_build.disk.layout import DiskOptions, Layout, MiB, align_up, plan_layout
from kairos_build.disk.raw_disk import CONSOLES, link_or_copy, stage, volume_id, write_ext4
from kairos_build.trusted.keys import SigningKeys
from kairos_build.trusted.uki import SYSTEMD_BOOT, assemble_uki, image_file, sign_efi
from kairos_build.trusted.verity import VerityImage

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


def signed_ukis(
    rootfs: Path, work: Path, keys: SigningKeys, verity: VerityImage, extra: tuple[str, ...]
) -> dict[str, Path]:
    """ESP path -> host file of the system and recovery UKIs, signed."""
    work.mkdir(exist_ok=True)
    made: dict[str, Path] = {}
    for uki in (SYSTEM, RECOVERY):
        name = uki.name(verity)
        cmdline = uki.cmdline(verity, extra)
        unsigned = assemble_uki(rootfs, work, name, cmdline, keys)
        signed = sign_efi(unsigned, work / f"{name}.efi", keys.db_key, keys.db_cert)
        unsigned.unlink()
        log.info("  %s.efi: %d MiB", name, -(-signed.stat().st_size // MiB))
        made[f"{UKI_DIR}/{name}.efi"] = signed
    return made


@dataclass(frozen=True)
class EspInputs:
    """What the Trusted Boot ESP is made of, besides the keys and the root image."""

    rootfs: Path
    pretty_name: str
    version: str
    extra: tuple[str, ...]


def make_esp_files(inputs: EspInputs, keys: SigningKeys, verity: VerityImage, work: Path) -> dict[str, Path]:
    """ESP path -> host file: signed systemd-boot, the signed UKIs, the menu, the keys to enroll.
    A signature holds its signing time, so signing again gives other bytes: a build makes
    these once and every format of it carries the same files (the export context sees to it)."""
    work.mkdir(exist_ok=True)
    title = f"Kairos {inputs.pretty_name} {inputs.version}"
    boot = image_file(inputs.rootfs, SYSTEMD_BOOT, "systemd-boot-efi")
    files = {
        "EFI/BOOT/BOOTX64.EFI": sign_efi(boot, work / "BOOTX64.EFI", keys.db_key, keys.db_cert),
        **signed_ukis(inputs.rootfs, work / "ukis", keys, verity, inputs.extra),
    }
    for number, (role, uki, suffix) in enumerate(ENTRIES, start=1):
        conf = work / f"{role}.conf"
        conf.write_text(
            loader_entry(title + suffix, number, inputs.version, f"/{UKI_DIR}/{uki.name(verity)}.efi")
        )
        files[f"loader/entries/{role}.conf"] = conf
    loader = work / "loader.conf"
    loader.write_text(render("systemd-boot/loader.conf.j2", timeout=3, enroll="if-safe"))
    files["loader/loader.conf"] = loader
    for name, auth in keys.auto_enroll.items():
        files[f"loader/keys/auto/{name}"] = auth
    return files


def plan_trusted_disk(options: DiskOptions, image_bytes: int, seed: str) -> Layout:
    """UEFI only, a 512 MiB ESP by default; COS_STATE sized for three images (active, passive,
    an upgrade) of the verified root image's size."""
    options = replace(
        options,
        firmware="uefi",
        image_size=align_up(image_bytes * 11 // 10, 16 * MiB),
        sizes=(("efi", DEFAULT_ESP), *options.sizes),
    )
    layout = plan_layout(options, image_bytes, image_bytes, seed)
    log.info("  layout: %s; disk %d MiB", layout.describe(), layout.disk_size >> 20)
    return layout


def write_trusted_disk(
    output: Path,
    layout: Layout,
    loaders: dict[str, Path],
    verity: VerityImage,
    cloud_config: Path | None,
    work: Path,
    seed: str,
    epoch: int,
) -> None:
    """Write the whole Trusted Boot disk of `layout` to `output`; `loaders` are the ESP's files
    (make_esp_files)."""
    create_disk(output, layout)
    parts = {p.name: p for p in layout.partitions}
    image = image_path(verity).lstrip("/")
    state = stage(work, "state")
    link_or_copy(verity.path, state / image)
    write_ext4(output, parts["state"], seed, state, epoch)
    # COS_RECOVERY: its image, and the system UKI of that image for a reset to lay back.
    recovery = stage(work, "recovery")
    link_or_copy(verity.path, recovery / image)
    system = f"{UKI_DIR}/{SYSTEM.name(verity)}.efi"
    (recovery / RESET_KIT).mkdir(parents=True)
    for path in (system, "loader/entries/active.conf", "loader/entries/passive.conf"):
        shutil.copyfile(loaders[path], recovery / RESET_KIT / Path(path).name)
    write_ext4(output, parts["recovery"], seed, recovery, epoch)
    oem = stage(work, "oem")
    if cloud_config is not None:
        shutil.copyfile(cloud_config, oem / "90_custom.yaml")
    write_ext4(output, parts["oem"], seed, oem, epoch)
    # COS_PERSISTENT stays blank: the node's first boot seals it to its own TPM (LUKS2, see
    # the kairos-immutable dracut module), which no build can do.
    with step("writing the ESP (systemd-boot, the signed UKIs, the keys to enroll)"):
        efi = parts["efi"]
        make_fat_in_disk(output, efi.start, efi.size, loaders, "COS_GRUB", volume_id(seed), epoch)
