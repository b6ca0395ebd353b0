"""The signed PCR 11 policy of a UKI (its `.pcrsig` section), signed on the host.

systemd-stub measures the UKI's sections into PCR 11, and systemd extends it again at each
boot phase (enter-initrd, leave-initrd, sysinit, ready). A disk sealed to "PCR 11 as signed by
this key" (systemd-cryptenroll --tpm2-public-key) unlocks only while PCR 11 holds a value the
key signed: only under a UKI we built, only before the system is fully up.

The values come from the image's own `systemd-measure calculate` (it knows its stub's rules;
no secret involved). The signatures are ours, made with the host's openssl, in the format
`systemd-measure sign` writes (a test compares the two byte for byte): for each phase, the TPM2
PolicyPCR digest over PCR 11 (`pol`), its RSA PKCS#1 v1.5 SHA-256 signature (`sig`), and the
SHA-256 of the public key's PKCS#1 DER (`pkfp`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from kairos_build.core.errors import BuildError
from kairos_build.core.pe import section_contents
from kairos_build.core.sandbox import run_in_root
from kairos_build.core.tools import run

PCR = 11
BANK = "sha256"
MEASURE = "/usr/lib/systemd/systemd-measure"
# The sections systemd-stub measures, by systemd-measure's option for each.
MEASURED = ("linux", "osrel", "cmdline", "initrd", "ucode", "splash", "dtb", "uname", "sbat", "pcrpkey")
_TPM2_CC_POLICY_PCR = 0x0000017F
_TPM2_ALG_SHA256 = 0x000B


def pcr_selection(pcr: int = PCR) -> bytes:
    """TPML_PCR_SELECTION of one PCR in the SHA-256 bank (three bytes of bitmap)."""
    bitmap = bytearray(3)
    bitmap[pcr // 8] |= 1 << (pcr % 8)
    return (1).to_bytes(4, "big") + _TPM2_ALG_SHA256.to_bytes(2, "big") + bytes([3]) + bitmap


def policy_digest(pcr_value: bytes) -> bytes:
    """The TPM2 policy digest of PolicyPCR(PCR 11 == pcr_value), from an empty policy."""
    command = _TPM2_CC_POLICY_PCR.to_bytes(4, "big")
    return hashlib.sha256(bytes(32) + command + pcr_selection() + hashlib.sha256(pcr_value).digest()).digest()


def measure(rootfs: Path, uki: Path, work: Path, inside: str) -> list[tuple[str, str]]:
    """(phase, expected PCR 11 in hex) for each boot phase of the unsigned `uki`, from the
    image's systemd-measure; `work` is shown as `inside` in the sandbox."""
    sections = section_contents(uki)
    if sections is None:
        raise BuildError(f"{uki.name} is not a PE image")
    options = []
    with uki.open("rb") as handle:
        for name in MEASURED:
            if f".{name}" not in sections:
                continue
            offset, size = sections[f".{name}"]
            handle.seek(offset)
            (work / f"section.{name}").write_bytes(handle.read(size))
            options.append(f"--{name}={inside}/section.{name}")
    out = run_in_root(
        rootfs,
        [MEASURE, "calculate", f"--bank={BANK}", "--json=short", *options],
        binds=[(work, inside)],
        read_only=True,
    )
    for name in MEASURED:
        (work / f"section.{name}").unlink(missing_ok=True)
    try:
        values = json.loads(out)[BANK]
        return [(str(v["phase"]), str(v["hash"])) for v in values if v["pcr"] == PCR]
    except (ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"systemd-measure printed no PCR {PCR} values: {out.strip()[-300:]}") from exc


def public_key_fingerprint(public_key: Path) -> str:
    """systemd's fingerprint of an RSA public key: SHA-256 of its PKCS#1 DER."""
    der = public_key.with_name(public_key.name + ".der")
    run(
        [
            "openssl",
            "rsa",
            "-pubin",
            "-in",
            str(public_key),
            "-RSAPublicKey_out",
            "-outform",
            "DER",
            "-out",
            str(der),
        ],
        capture=True,
    )
    try:
        return hashlib.sha256(der.read_bytes()).hexdigest()
    finally:
        der.unlink()


def sign_policies(values: list[tuple[str, str]], private_key: Path, public_copy: Path, work: Path) -> str:
    """The `.pcrsig` JSON for `values`; `public_copy` is a copy of the public key in `work`."""
    fingerprint = public_key_fingerprint(public_copy)
    entries = []
    for index, (_phase, value) in enumerate(values):
        policy = policy_digest(bytes.fromhex(value))
        message, signature = work / f"policy.{index}", work / f"policy.{index}.sig"
        message.write_bytes(policy)
        run(
            ["openssl", "dgst", "-sha256", "-sign", str(private_key), "-out", str(signature), str(message)],
            capture=True,
        )
        entries.append(
            {
                "pcrs": [PCR],
                "pkfp": fingerprint,
                "pol": policy.hex(),
                "sig": base64.b64encode(signature.read_bytes()).decode(),
            }
        )
        message.unlink()
        signature.unlink()
    return json.dumps({BANK: entries})
