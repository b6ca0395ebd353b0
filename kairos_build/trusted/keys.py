"""A Trusted Boot key directory, as `kairos-build genkey` or AuroraBoot's `genkey` writes it,
loaded for a build: every file a build needs is there, no private key is open to others, and
the db key is the key of the db certificate (a mismatch would only show when a signed image
fails to boot)."""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kairos_build.core.cache import Cache, default_cache_dir
from kairos_build.core.errors import BuildError, InputError
from kairos_build.core.log import log
from kairos_build.trusted.openssl import certificate_public_key_pem, public_key_pem

SECURE_BOOT_KEYS = ("PK", "KEK", "db")
PCR_PRIVATE_KEY = "tpm2-pcr-private.pem"
PCR_PUBLIC_KEY = "tpm2-pcr-public.pem"
OWNER_GUID_FILE = "GUID"
PRIVATE_KEYS = (*(f"{key}.key" for key in SECURE_BOOT_KEYS), PCR_PRIVATE_KEY)
# What a build uses. PK.key and KEK.key are not among them: they only sign new KEK and db
# lists and are best kept offline.
_NEEDED = ("db.key", "db.pem", "PK.pem", "KEK.pem", "PK.auth", "KEK.auth", "db.auth", PCR_PRIVATE_KEY)


@dataclass(frozen=True)
class SigningKeys:
    directory: Path
    db_key: Path  # signs EFI binaries: sbsign --key, ukify --secureboot-private-key
    db_cert: Path
    pk_cert: Path
    kek_cert: Path
    pk_auth: Path  # the three .auth files go to loader/keys/auto/ for systemd-boot to enroll
    kek_auth: Path
    db_auth: Path
    pcr_private_key: Path  # signs the PCR 11 policy: systemd-measure, ukify --pcr-private-key
    # The directory's tpm2-pcr-public.pem, or (AuroraBoot writes none) one derived into the cache.
    pcr_public_key: Path

    @property
    def auto_enroll(self) -> dict[str, Path]:
        """The files of loader/keys/auto/ on the ESP, by their name there."""
        return {"PK.auth": self.pk_auth, "KEK.auth": self.kek_auth, "db.auth": self.db_auth}


def load_keys(directory: Path, cache_dir: Path | None = None) -> SigningKeys:
    """The signing keys in `directory`, or InputError saying what is wrong with it."""
    if not directory.is_dir():
        raise InputError(
            f"key directory {directory} does not exist",
            hint=f"make one with 'kairos-build genkey {shlex.quote(str(directory))}'",
        )
    missing = [name for name in _NEEDED if not (directory / name).is_file()]
    if missing:
        raise InputError(
            f"key directory {directory} lacks {', '.join(missing)}",
            hint="'kairos-build genkey DIR' (or AuroraBoot's genkey) writes a complete set",
        )
    refuse_open_private_keys(directory)
    _check_key_of_certificate(directory / "db.key", directory / "db.pem")
    public = directory / PCR_PUBLIC_KEY
    if not public.is_file():
        public = _derived_public_key(directory / PCR_PRIVATE_KEY, cache_dir or default_cache_dir())
    return SigningKeys(
        directory=directory,
        db_key=directory / "db.key",
        db_cert=directory / "db.pem",
        pk_cert=directory / "PK.pem",
        kek_cert=directory / "KEK.pem",
        pk_auth=directory / "PK.auth",
        kek_auth=directory / "KEK.auth",
        db_auth=directory / "db.auth",
        pcr_private_key=directory / PCR_PRIVATE_KEY,
        pcr_public_key=public,
    )


def refuse_open_private_keys(directory: Path) -> None:
    """InputError naming every private key file in `directory` that group or others may access."""
    open_keys = [
        (path, path.stat().st_mode & 0o777)
        for path in (directory / name for name in PRIVATE_KEYS)
        if path.is_file()
    ]
    open_keys = [(path, mode) for path, mode in open_keys if mode & 0o077]
    if open_keys:
        shown = ", ".join(f"{path} (mode {mode:04o})" for path, mode in open_keys)
        raise InputError(
            f"private key files open to group or others: {shown}",
            hint="make them private: chmod 600 " + " ".join(shlex.quote(str(path)) for path, _ in open_keys),
        )


def _public_key(read: Callable[[Path], str], path: Path, what: str) -> str:
    try:
        return read(path)
    except BuildError as exc:
        raise InputError(f"{path} is not {what} openssl can read", hint=exc.message.splitlines()[-1]) from exc


def _check_key_of_certificate(key: Path, certificate: Path) -> None:
    if _public_key(public_key_pem, key, "a private key") != _public_key(
        certificate_public_key_pem, certificate, "a PEM certificate"
    ):
        raise InputError(
            f"{key} is not the key of {certificate}",
            hint="keep the pair 'kairos-build genkey' wrote together",
        )


def _derived_public_key(private_key: Path, cache_dir: Path) -> Path:
    """The public half of `private_key`, kept in the cache (by its own hash): the key directory
    may be read-only, and a loader that writes into it would surprise."""
    pem = _public_key(public_key_pem, private_key, "a private key")
    entry = Cache(cache_dir).get_or_make(
        "pcr-public-key",
        hashlib.sha256(pem.encode()).hexdigest(),
        lambda folder: (folder / PCR_PUBLIC_KEY).write_text(pem),
    )
    log.info(
        "%s has no %s: using the one derived from %s", private_key.parent, PCR_PUBLIC_KEY, private_key.name
    )
    return entry / PCR_PUBLIC_KEY
