"""Unified kernel images from the image's own parts, signed on the host.

The image's `ukify` (systemd >= 256) assembles each UKI from the image's systemd-stub, kernel,
initramfs, os-release and kernel version, plus our command line and the PCR public key, run
in the build sandbox over the read-only rootfs (the conversion runs apt the same way). Nothing
secret ever enters the sandbox: the image's code is hostile, and a signing key it saw could be
copied into the artifact or sent away. So the db signature (sbsign) and the PCR 11 policy
signature (trusted/pcr.py) are made on the host, with the host's tools.

The OS is not in the UKI (trusted/verity.py): each one is a kernel and an initramfs, tens of
MB, where Kairos's UKIs carry the whole OS as their initrd.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kairos_build.core import rootfs as rootfs_module
from kairos_build.core.errors import InputError
from kairos_build.core.log import step
from kairos_build.core.sandbox import run_in_root
from kairos_build.core.tools import run
from kairos_build.trusted.keys import SigningKeys
from kairos_build.trusted.pcr import measure, sign_policies

STUB = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
SYSTEMD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
UKIFY = "usr/bin/ukify"
TOOLS = ("sbsign", "openssl")
_INSIDE = "/tmp/kairos-uki"  # where the work folder shows in the sandbox


def image_file(rootfs: Path, path: str, package: str) -> Path:
    """A file the image must have for Trusted Boot, or an error naming its package."""
    found = rootfs_module.regular_file(rootfs, path)
    if found is None:
        raise InputError(
            f"the image has no /{path}, which Trusted Boot needs",
            hint=f"install {package} in the image (the debian flavor's trixie "
            "release does: its `trusted` packages)",
        )
    return found


def assemble_uki(rootfs: Path, work: Path, name: str, cmdline: str, keys: SigningKeys) -> Path:
    """The UKI `work/NAME.unsigned.efi`, made by the image's ukify, with its PCR 11 policy
    signed (not yet signed for Secure Boot).

    Two ukify runs: the first without `.pcrsig`, whose sections the image's systemd-measure
    turns into the PCR values we sign; the second with the same inputs and the signature as
    `.pcrsig`. ukify's output is a function of its inputs, so the measured sections are the
    same bytes in both (the test of pcr.py checks this against ukify signing by itself).
    """
    image_file(rootfs, UKIFY, "systemd-ukify")
    image_file(rootfs, STUB, "systemd-boot-efi")
    (work / f"{name}.cmdline").write_text(cmdline)
    shutil.copyfile(keys.pcr_public_key, work / "pcr-public.pem")
    first, output = work / f"{name}.measured.efi", work / f"{name}.unsigned.efi"
    with step(f"assembling the {name} UKI with the image's ukify"):
        _ukify(rootfs, work, name, first)
        values = measure(rootfs, first, work, _INSIDE)
        first.unlink()
        (work / f"{name}.pcrsig").write_text(
            sign_policies(values, keys.pcr_private_key, work / "pcr-public.pem", work)
        )
        _ukify(rootfs, work, name, output, f"--section=.pcrsig:@{_INSIDE}/{name}.pcrsig")
    return output


def _ukify(rootfs: Path, work: Path, name: str, output: Path, *extra: str) -> None:
    output.unlink(missing_ok=True)
    run_in_root(
        rootfs,
        [
            "ukify",
            "build",
            "--linux=/boot/vmlinuz",
            "--initrd=/boot/initrd",
            f"--cmdline=@{_INSIDE}/{name}.cmdline",
            "--os-release=@/etc/os-release",
            f"--stub=/{STUB}",
            f"--pcrpkey={_INSIDE}/pcr-public.pem",
            *extra,
            f"--output={_INSIDE}/{output.name}",
        ],
        env={"PYTHONDONTWRITEBYTECODE": "1"},
        binds=[(work, _INSIDE)],
        read_only=True,
    )


def sign_efi(source: Path, output: Path, key: Path, cert: Path) -> Path:
    """`source` signed for Secure Boot with the db key (Authenticode, by the host's sbsign)."""
    output.unlink(missing_ok=True)
    run(["sbsign", "--key", str(key), "--cert", str(cert), "--output", str(output), str(source)])
    return output
