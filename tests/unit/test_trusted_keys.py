"""`kairos-build genkey` and `load_keys` with the real openssl: the file set AuroraBoot writes,
private keys private whatever the umask, certificates that sign and verify an EFI binary, and
signature lists and .auth files checked field by field, by signature, and byte for byte against
efitools."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kairos_build.core.errors import InputError
from kairos_build.trusted.efivars import (
    EFI_CERT_TYPE_PKCS7_GUID,
    EFI_CERT_X509_GUID,
    VENDORS,
    signed_bytes,
    signed_data_of,
)
from kairos_build.trusted.genkey import SIGNER, generate_keys, key_set_files
from kairos_build.trusted.keys import PRIVATE_KEYS, load_keys
from kairos_build.trusted.openssl import create_private_file, public_key_pem
from tests.conftest import run_cli

SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")
VARIABLES = ("PK", "KEK", "db")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One key set for the tests that only read it (four RSA keys take a second)."""
    directory = tmp_path_factory.mktemp("genkey") / "keys"
    generate_keys(directory, name="Test Co", expiration_days=30)
    return directory


@pytest.fixture()
def umask() -> Iterator[None]:
    """Restores the process umask after a test sets its own."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def copy_keys(keys: Path, target: Path) -> Path:
    shutil.copytree(keys, target)  # copies the modes too
    return target


def der(tag: int, body: bytes) -> bytes:
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def parse_auth(blob: bytes) -> tuple[bytes, int, int, uuid.UUID, bytes, bytes]:
    """EFI_VARIABLE_AUTHENTICATION_2 + data: (timestamp, revision, certificate type, cert type
    GUID, CertData, the variable's data)."""
    timestamp = blob[:16]
    length, revision, cert_type = struct.unpack_from("<IHH", blob, 16)
    guid = uuid.UUID(bytes_le=blob[24:40])
    return timestamp, revision, cert_type, guid, blob[40 : 16 + length], blob[16 + length :]


def verify_signature(tmp_path: Path, signed_data: bytes, payload: bytes, signer: Path) -> bool:
    """openssl checks the SignedData against `signer` alone (-nointern: not the certificate it
    carries) over `payload`; wrapped in a ContentInfo first, as the firmware (EDK2's
    WrapPkcs7Data) does before it verifies."""
    (tmp_path / "sig.p7").write_bytes(der(0x30, SIGNED_DATA_OID + der(0xA0, signed_data)))
    (tmp_path / "payload").write_bytes(payload)
    result = subprocess.run(
        [
            "openssl",
            "smime",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            tmp_path / "sig.p7",
            "-content",
            tmp_path / "payload",
            "-nointern",
            "-certfile",
            signer,
            "-noverify",
            "-out",
            os.devnull,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


def test_the_file_set_is_auroraboots_with_private_keys_private(keys: Path) -> None:
    assert sorted(p.name for p in keys.iterdir()) == sorted(key_set_files())
    assert {"PK.key", "KEK.auth", "db.esl", "db.der", "tpm2-pcr-private.pem"} <= set(key_set_files())
    assert keys.stat().st_mode & 0o777 == 0o700
    for path in keys.iterdir():
        assert path.stat().st_mode & 0o777 == (0o600 if path.name in PRIVATE_KEYS else 0o644), path
    owner = uuid.UUID((keys / "GUID").read_text().strip())
    assert owner.version == 4


@pytest.mark.parametrize("mask", [0o000, 0o277])
def test_modes_do_not_depend_on_the_umask(tmp_path: Path, umask: None, mask: int) -> None:
    os.umask(mask)
    generate_keys(tmp_path / "new" / "keys")
    assert (tmp_path / "new" / "keys").stat().st_mode & 0o777 == 0o700
    for path in (tmp_path / "new" / "keys").iterdir():
        assert path.stat().st_mode & 0o777 == (0o600 if path.name in PRIVATE_KEYS else 0o644), path


def test_a_private_file_is_0600_from_its_creation(tmp_path: Path, umask: None) -> None:
    os.umask(0)
    create_private_file(tmp_path / "k")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        create_private_file(tmp_path / "k")


def test_certificates_name_the_set_and_last_the_days_asked(keys: Path) -> None:
    x509 = pytest.importorskip("cryptography.x509")
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    for variable in VARIABLES:
        cert = x509.load_pem_x509_certificate((keys / f"{variable}.pem").read_bytes())
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == f"Test Co-{variable}" and cert.issuer == cert.subject
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30)
        assert abs(cert.not_valid_before_utc - datetime.now(UTC)) < timedelta(hours=1)
        assert cert.public_bytes(serialization.Encoding.DER) == (keys / f"{variable}.der").read_bytes()
        key = serialization.load_pem_private_key((keys / f"{variable}.key").read_bytes(), None)
        assert key.key_size == 2048
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    pcr = serialization.load_pem_private_key((keys / "tpm2-pcr-private.pem").read_bytes(), None)
    public = serialization.load_pem_public_key((keys / "tpm2-pcr-public.pem").read_bytes())
    assert pcr.key_size == 2048 and pcr.public_key().public_numbers() == public.public_numbers()


def test_db_signs_an_efi_binary_that_only_db_verifies(keys: Path, tmp_path: Path) -> None:
    if shutil.which("sbsign") is None or not SYSTEMD_BOOT.exists():
        pytest.skip("needs sbsigntool and systemd-boot-efi")
    image = shutil.copy(SYSTEMD_BOOT, tmp_path / "systemd-bootx64.efi")
    signed = tmp_path / "signed.efi"
    subprocess.run(
        ["sbsign", "--key", keys / "db.key", "--cert", keys / "db.pem", "--output", signed, image],
        check=True,
        capture_output=True,
    )

    def verify(cert: str) -> int:
        return subprocess.run(
            ["sbverify", "--cert", keys / cert, signed], capture_output=True, check=False
        ).returncode

    assert verify("db.pem") == 0
    assert verify("KEK.pem") != 0 and verify("PK.pem") != 0


def test_each_signature_list_holds_its_certificate(keys: Path) -> None:
    owner = uuid.UUID((keys / "GUID").read_text().strip())
    for variable in VARIABLES:
        esl = (keys / f"{variable}.esl").read_bytes()
        cert = (keys / f"{variable}.der").read_bytes()
        list_size, header_size, entry_size = struct.unpack_from("<III", esl, 16)
        assert uuid.UUID(bytes_le=esl[:16]) == EFI_CERT_X509_GUID
        assert (list_size, header_size, entry_size) == (len(esl), 0, 16 + len(cert))
        assert uuid.UUID(bytes_le=esl[28:44]) == owner and esl[44:] == cert


def test_auth_files_are_signed_writes_of_the_lists(keys: Path, tmp_path: Path) -> None:
    stamps = set()
    for variable in VARIABLES:
        blob = (keys / f"{variable}.auth").read_bytes()
        timestamp, revision, cert_type, guid, signed_data, data = parse_auth(blob)
        assert (revision, cert_type, guid) == (0x0200, 0x0EF1, EFI_CERT_TYPE_PKCS7_GUID)
        assert data == (keys / f"{variable}.esl").read_bytes()
        year, month, day, hour, minute, second, pad1, nano, zone, daylight, pad2 = struct.unpack(
            "<HBBBBBBIhBB", timestamp
        )
        when = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        assert abs(when - datetime.now(UTC)) < timedelta(hours=1)
        assert (pad1, nano, zone, daylight, pad2) == (0, 0, 0, 0, 0)
        stamps.add(timestamp)
        # The bare SignedData (SEQUENCE, then version INTEGER 1), not a ContentInfo (OID).
        assert signed_data[0] == 0x30 and SIGNED_DATA_OID not in signed_data[:16]
        payload = (
            variable.encode("utf-16-le")
            + VENDORS[variable].bytes_le
            + struct.pack("<I", 0x27)
            + timestamp
            + data
        )
        assert payload == signed_bytes(variable, data, timestamp)
        assert verify_signature(tmp_path, signed_data, payload, keys / f"{SIGNER[variable]}.pem")
        other = "KEK" if SIGNER[variable] == "PK" else "PK"
        assert not verify_signature(tmp_path, signed_data, payload, keys / f"{other}.pem")
        # One bit of the last byte flipped (setting it to 0 left it unchanged once in 256 runs).
        tampered = payload[:-1] + bytes([payload[-1] ^ 1])
        assert not verify_signature(tmp_path, signed_data, tampered, keys / f"{SIGNER[variable]}.pem")
    assert len(stamps) == 1
    assert VENDORS["PK"] == VENDORS["KEK"] == uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
    assert VENDORS["db"] == uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")


def test_efitools_writes_the_same_bytes(keys: Path, tmp_path: Path) -> None:
    """cert-to-efi-sig-list and sign-efi-sig-list, given our certificate, key, owner and
    timestamp, write exactly our .esl and .auth (RSA PKCS#1 v1.5 signatures are deterministic)."""
    if shutil.which("sign-efi-sig-list") is None:
        pytest.skip("efitools not installed")
    owner = (keys / "GUID").read_text().strip()
    for variable in VARIABLES:
        esl, auth = tmp_path / f"{variable}.esl", tmp_path / f"{variable}.auth"
        subprocess.run(
            ["cert-to-efi-sig-list", "-g", owner, keys / f"{variable}.pem", esl],
            check=True,
            capture_output=True,
        )
        assert esl.read_bytes() == (keys / f"{variable}.esl").read_bytes()
        ours = (keys / f"{variable}.auth").read_bytes()
        year, month, day, hour, minute, second = struct.unpack_from("<H5B", ours)
        stamp = f"{year}-{month}-{day} {hour:02}:{minute:02}:{second:02}"
        signer = SIGNER[variable]
        subprocess.run(
            [
                "sign-efi-sig-list",
                "-t",
                stamp,
                "-k",
                keys / f"{signer}.key",
                "-c",
                keys / f"{signer}.pem",
                variable,
                esl,
                auth,
            ],
            check=True,
            capture_output=True,
        )
        assert auth.read_bytes() == ours, variable


def test_sbkeysync_finds_each_certificate_in_its_auth_file(keys: Path, tmp_path: Path) -> None:
    """sbsigntool's own reader of authenticated variable updates (the one sbkeysync enrolls
    with) skips our headers and finds the certificate in each list."""
    if shutil.which("sbkeysync") is None:
        pytest.skip("sbsigntool not installed")
    for variable in VARIABLES:
        (tmp_path / "store" / variable).mkdir(parents=True)
        shutil.copy(keys / f"{variable}.auth", tmp_path / "store" / variable)
    (tmp_path / "efivars").mkdir()
    result = subprocess.run(
        [
            "sbkeysync",
            "--keystore",
            tmp_path / "store",
            "--no-default-keystores",
            "--efivars-path",
            tmp_path / "efivars",
            "--dry-run",
            "--verbose",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = result.stdout[result.stdout.index("filesystem keys:") :]
    for variable in VARIABLES:
        assert f"  {variable}:\n    /CN=Test Co-{variable}\n     from " in found, result.stdout


def test_an_existing_set_is_kept_unless_forced(keys: Path, tmp_path: Path) -> None:
    directory = copy_keys(keys, tmp_path / "keys")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    with pytest.raises(InputError) as err:
        generate_keys(directory)
    assert "PK.key" in err.value.message and "tpm2-pcr-private.pem" in err.value.message
    assert "--force" in str(err.value.hint)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before

    made = generate_keys(directory, force=True)
    assert sorted(p.name for p in directory.iterdir()) == sorted(key_set_files())  # no leftovers
    assert (directory / "GUID").read_text().strip() == str(made.owner) != before["GUID"].decode().strip()
    assert all((directory / name).read_bytes() != before[name] for name in ("db.key", "db.auth"))


def test_one_stray_key_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "db.key").write_text("mine")
    with pytest.raises(InputError) as err:
        generate_keys(tmp_path / "keys")
    assert err.value.message.endswith("already holds key files: db.key")
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["db.key"]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"name": ""}, "--name"),
        ({"name": "x" * 61}, "--name"),
        ({"name": "a\nb"}, "--name"),
        ({"expiration_days": 0}, "--expiration-days"),
        ({"key_bits": 3072}, "--key-bits"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(
    tmp_path: Path, options: dict[str, object], needle: str
) -> None:
    with pytest.raises(InputError, match=needle):
        generate_keys(tmp_path / "keys", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "keys").exists()


def test_odd_names_reach_the_certificate_intact(tmp_path: Path) -> None:
    x509 = pytest.importorskip("cryptography.x509")
    generate_keys(tmp_path / "keys", name="A/B \\ C=D, É")
    cert = x509.load_pem_x509_certificate((tmp_path / "keys" / "db.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "A/B \\ C=D, É-db"


def test_load_keys_gives_the_build_its_files(keys: Path, tmp_path: Path) -> None:
    loaded = load_keys(keys, cache_dir=tmp_path / "cache")
    assert (loaded.db_key, loaded.db_cert) == (keys / "db.key", keys / "db.pem")
    assert loaded.pcr_public_key == keys / "tpm2-pcr-public.pem"
    assert {name: path.name for name, path in loaded.auto_enroll.items()} == {
        "PK.auth": "PK.auth",
        "KEK.auth": "KEK.auth",
        "db.auth": "db.auth",
    }
    assert not (tmp_path / "cache").exists()  # nothing to derive


@pytest.mark.parametrize(
    ("name", "mode"), [("db.key", 0o644), ("PK.key", 0o640), ("tpm2-pcr-private.pem", 0o604)]
)
def test_load_keys_refuses_a_private_key_open_to_others(
    keys: Path, tmp_path: Path, name: str, mode: int
) -> None:
    directory = copy_keys(keys, tmp_path / "keys")
    (directory / name).chmod(mode)
    with pytest.raises(InputError) as err:
        load_keys(directory, cache_dir=tmp_path / "cache")
    assert str(directory / name) in err.value.message and f"{mode:04o}" in err.value.message
    assert err.value.hint == f"make them private: chmod 600 {directory / name}"


def test_an_auroraboot_key_directory_loads(keys: Path, tmp_path: Path) -> None:
    """AuroraBoot writes no tpm2-pcr-public.pem and no GUID: the public key is derived into the
    cache (the key directory stays as it is), once."""
    directory = copy_keys(keys, tmp_path / "keys")
    (directory / "tpm2-pcr-public.pem").unlink()
    (directory / "GUID").unlink()
    before = sorted(p.name for p in directory.iterdir())
    loaded = load_keys(directory, cache_dir=tmp_path / "cache")
    assert loaded.pcr_public_key.is_relative_to(tmp_path / "cache")
    assert loaded.pcr_public_key.read_text() == public_key_pem(directory / "tpm2-pcr-private.pem")
    assert loaded.pcr_public_key.read_text() == (keys / "tpm2-pcr-public.pem").read_text()
    assert sorted(p.name for p in directory.iterdir()) == before
    assert load_keys(directory, cache_dir=tmp_path / "cache").pcr_public_key == loaded.pcr_public_key


def test_load_keys_names_what_is_missing_or_mismatched(keys: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_keys(tmp_path / "nowhere")
    directory = copy_keys(keys, tmp_path / "keys")
    (directory / "db.auth").unlink()
    (directory / "tpm2-pcr-private.pem").unlink()
    with pytest.raises(InputError, match=r"lacks db\.auth, tpm2-pcr-private\.pem"):
        load_keys(directory)
    shutil.copy(keys / "db.auth", directory / "db.auth")
    shutil.copy(keys / "tpm2-pcr-private.pem", directory / "tpm2-pcr-private.pem")
    os.replace(directory / "KEK.key", directory / "db.key")
    with pytest.raises(InputError, match=r"db\.key is not the key of .*db\.pem"):
        load_keys(directory)
    (directory / "db.key").write_text("not a key")
    with pytest.raises(InputError, match=r"db\.key is not a private key openssl can read"):
        load_keys(directory)


def test_signed_data_of_refuses_what_is_not_a_content_info() -> None:
    inner = der(0x30, der(0x02, b"\x01"))
    assert signed_data_of(der(0x30, SIGNED_DATA_OID + der(0xA0, inner))) == inner
    long_inner = der(0x30, der(0x04, bytes(300)))  # long-form lengths
    assert signed_data_of(der(0x30, SIGNED_DATA_OID + der(0xA0, long_inner))) == long_inner
    for bad in (
        b"",
        inner,
        der(0x30, SIGNED_DATA_OID + der(0xA0, inner)) + b"\0",
        der(0x30, bytes.fromhex("06092a864886f70d010701") + der(0xA0, inner)),
    ):
        with pytest.raises(ValueError):
            signed_data_of(bad)


def test_the_command_line(tmp_path: Path) -> None:
    result = run_cli("genkey", str(tmp_path / "keys"), "--name", "CLI", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["files"] == list(key_set_files())
    assert payload["owner"] == (tmp_path / "keys" / "GUID").read_text().strip()
    assert payload["expiration_days"] == 365
    again = run_cli("genkey", str(tmp_path / "keys"), timeout=120)
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert again.returncode == 2 and len(errors) == 1 and "PK.key" in errors[0], again.stderr
    assert "hint:" in again.stderr and "Traceback" not in again.stderr
