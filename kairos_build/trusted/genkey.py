"""`kairos-build genkey`: the Trusted Boot keys, named as AuroraBoot's `genkey` names them, so a
key directory moves between the two tools.

For each of PK, KEK and db: X.key (RSA private key), X.pem (self-signed certificate, CN
"NAME-X" as AuroraBoot writes it), X.der (the certificate in DER), X.esl (an EFI signature list
of it) and X.auth (that list as a signed, time-based write of the variable X: PK and KEK signed
by PK, db by KEK), which systemd-boot enrolls from loader/keys/auto/ when the firmware is in
setup mode. Then tpm2-pcr-private.pem and tpm2-pcr-public.pem, the key that signs the PCR 11
policy, and GUID, the owner of every signature list of the set.

KEK and db hold only our own certificates: AuroraBoot adds Microsoft's unless told not to.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kairos_build.config.settings import DEFAULT_EXPIRATION_DAYS, DEFAULT_KEY_NAME
from kairos_build.core.errors import BuildError, InputError
from kairos_build.core.log import step
from kairos_build.trusted.efivars import (
    authenticated_variable,
    efi_time,
    signature_list,
    signed_bytes,
    signed_data_of,
)
from kairos_build.trusted.keys import (
    OWNER_GUID_FILE,
    PCR_PRIVATE_KEY,
    PCR_PUBLIC_KEY,
    PRIVATE_KEYS,
    SECURE_BOOT_KEYS,
)
from kairos_build.trusted.openssl import (
    certificate_der,
    new_private_key,
    public_key_pem,
    self_signed_certificate,
    sign_detached,
)

DEFAULT_NAME = DEFAULT_KEY_NAME
KEY_BITS = (2048, 4096)
# The PCR policy key stays RSA 2048, as systemd's documentation makes it: TPMs sign-check
# RSA 2048 everywhere, larger keys not always.
PCR_KEY_BITS = 2048
# Who signs each variable's .auth: the PK signs itself and the KEK; the KEK signs db.
SIGNER = {"PK": "PK", "KEK": "PK", "db": "KEK"}
_CN_MAX = 64 - len("-KEK")  # X.509 caps a common name at 64 characters


@dataclass(frozen=True)
class GeneratedKeys:
    directory: Path
    files: tuple[str, ...]  # names in `directory`
    owner: uuid.UUID  # SignatureOwner of every signature list, also in the GUID file
    expiration_days: int


def key_set_files() -> tuple[str, ...]:
    """Every file genkey writes, in the order it lists them."""
    per_key = [f"{key}.{ext}" for key in SECURE_BOOT_KEYS for ext in ("key", "pem", "der", "esl", "auth")]
    return (*per_key, PCR_PRIVATE_KEY, PCR_PUBLIC_KEY, OWNER_GUID_FILE)


def generate_keys(
    directory: Path,
    *,
    name: str = DEFAULT_NAME,
    expiration_days: int = DEFAULT_EXPIRATION_DAYS,
    key_bits: int = 2048,
    force: bool = False,
) -> GeneratedKeys:
    """Write a new key set into `directory` (made 0700 when missing). Existing key files stop
    it unless `force`. The set is made in a private folder inside `directory` and moved into
    place only when complete, so a failure leaves no partial set behind."""
    _check_options(name, expiration_days, key_bits)
    files = key_set_files()
    _refuse_existing(directory, files, force)
    staging = _staging_folder(directory)
    try:
        owner = uuid.uuid4()
        with step(f"making the Secure Boot keys PK, KEK, db and the PCR policy key in {directory}"):
            _make_key_set(staging, name, expiration_days, key_bits, owner)
        for file in files:
            os.replace(staging / file, directory / file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return GeneratedKeys(directory, files, owner, expiration_days)


def _check_options(name: str, expiration_days: int, key_bits: int) -> None:
    if not name or not name.isprintable() or len(name) > _CN_MAX:
        raise InputError(
            f"--name {name!r} cannot name a certificate", hint=f"use 1 to {_CN_MAX} printable characters"
        )
    if not 1 <= expiration_days <= 36500:
        raise InputError(f"--expiration-days {expiration_days} is out of range", hint="use 1 to 36500 days")
    if key_bits not in KEY_BITS:
        raise InputError(
            f"--key-bits {key_bits} is not offered",
            hint=" or ".join(map(str, KEY_BITS)) + " (2048 is what all firmware takes)",
        )


def _refuse_existing(directory: Path, files: tuple[str, ...], force: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory} is not a directory", hint="give a directory for the keys")
    existing = [file for file in files if os.path.lexists(directory / file)]
    if existing and not force:
        raise InputError(
            f"{directory} already holds key files: {', '.join(existing)}",
            hint="choose another directory, or --force to replace them (the old keys are lost, "
            "and images signed with them stop booting once the new ones are enrolled)",
        )


def _staging_folder(directory: Path) -> Path:
    try:
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o700)
            directory.chmod(0o700)  # mkdir's mode is cut by the umask, which could leave 0500
        return Path(tempfile.mkdtemp(prefix=".genkey-", dir=directory))  # mode 0700
    except PermissionError as exc:
        raise InputError(
            f"cannot write the keys into {directory}: {exc.strerror}",
            hint="choose a directory you may write to",
        ) from exc


def _make_key_set(folder: Path, name: str, days: int, key_bits: int, owner: uuid.UUID) -> None:
    # One timestamp for the three writes: the firmware only asks that a later write of the
    # same variable carry a later one.
    timestamp = efi_time(datetime.now(UTC))
    for key in SECURE_BOOT_KEYS:  # in hierarchy order: each signer exists before it signs
        new_private_key(folder / f"{key}.key", key_bits)
        self_signed_certificate(folder / f"{key}.key", f"{name}-{key}", days, folder / f"{key}.pem")
        certificate_der(folder / f"{key}.pem", folder / f"{key}.der")
        esl = signature_list((folder / f"{key}.der").read_bytes(), owner)
        (folder / f"{key}.esl").write_bytes(esl)
        signer = SIGNER[key]
        content_info = sign_detached(
            signed_bytes(key, esl, timestamp), folder / f"{signer}.key", folder / f"{signer}.pem"
        )
        try:
            signature = signed_data_of(content_info)
        except ValueError as exc:
            raise BuildError(f"openssl smime gave no PKCS#7 signature for {key}.auth: {exc}") from exc
        (folder / f"{key}.auth").write_bytes(authenticated_variable(timestamp, signature, esl))
    new_private_key(folder / PCR_PRIVATE_KEY, PCR_KEY_BITS)
    (folder / PCR_PUBLIC_KEY).write_text(public_key_pem(folder / PCR_PRIVATE_KEY))
    (folder / OWNER_GUID_FILE).write_text(f"{owner}\n")
    for file in key_set_files():
        if file not in PRIVATE_KEYS:  # whatever the umask made them: public files are public
            (folder / file).chmod(0o644)
