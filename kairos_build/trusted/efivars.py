"""Secure Boot variables as files: an EFI signature list (`.esl`) and a time-based
authenticated write of it (`.auth`), the bytes that `SetVariable()` takes.

The layouts are the UEFI specification's (EFI_SIGNATURE_LIST in the Secure Boot chapter,
EFI_VARIABLE_AUTHENTICATION_2 under SetVariable()). For the same certificate, key, owner and
timestamp they are byte for byte what efitools' `cert-to-efi-sig-list` and `sign-efi-sig-list`
write (a test holds us to that). Only the PKCS#7 signature itself is made elsewhere (by
openssl); this module is pure data.
"""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime

EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_TYPE_PKCS7_GUID = uuid.UUID("4aafd29d-68df-49ee-8aa9-347d375665a7")
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")

# The namespace (vendor GUID) of each Secure Boot variable.
VENDORS: dict[str, uuid.UUID] = {
    "PK": EFI_GLOBAL_VARIABLE,
    "KEK": EFI_GLOBAL_VARIABLE,
    "db": EFI_IMAGE_SECURITY_DATABASE,
    "dbx": EFI_IMAGE_SECURITY_DATABASE,
}

# NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS: the
# attributes the firmware insists on for PK, KEK and db (sign-efi-sig-list's default too).
TIME_BASED_ATTRIBUTES = 0x27

_WIN_CERT_REVISION = 0x0200
_WIN_CERT_TYPE_EFI_GUID = 0x0EF1
_WIN_CERT_HEADER = struct.Struct("<IHH")  # dwLength, wRevision, wCertificateType
_LIST_HEADER = struct.Struct("<III")  # SignatureListSize, SignatureHeaderSize, SignatureSize
# Year, Month, Day, Hour, Minute, Second, Pad1, Nanosecond, TimeZone, Daylight, Pad2.
_EFI_TIME = struct.Struct("<HBBBBBBIhBB")

# DER of the OID 1.2.840.113549.1.7.2 (pkcs7-signedData).
_SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")


def signature_list(cert_der: bytes, owner: uuid.UUID) -> bytes:
    """An EFI_SIGNATURE_LIST holding one X.509 certificate (DER) owned by `owner`."""
    entry = owner.bytes_le + cert_der  # EFI_SIGNATURE_DATA: SignatureOwner, SignatureData
    header = _LIST_HEADER.pack(16 + _LIST_HEADER.size + len(entry), 0, len(entry))
    return EFI_CERT_X509_GUID.bytes_le + header + entry


def efi_time(when: datetime) -> bytes:
    """The EFI_TIME of an authenticated write: UTC to the second; the spec wants Pad1,
    Nanosecond, TimeZone, Daylight and Pad2 zero."""
    utc = when.astimezone(UTC)
    return _EFI_TIME.pack(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, 0, 0, 0, 0, 0)


def signed_bytes(
    variable: str, data: bytes, timestamp: bytes, attributes: int = TIME_BASED_ATTRIBUTES
) -> bytes:
    """What the firmware checks the signature over: VariableName (UTF-16LE, no NUL) ||
    VendorGuid || Attributes (u32 LE) || TimeStamp || Data."""
    return (
        variable.encode("utf-16-le")
        + VENDORS[variable].bytes_le
        + struct.pack("<I", attributes)
        + timestamp
        + data
    )


def authenticated_variable(timestamp: bytes, signed_data: bytes, data: bytes) -> bytes:
    """EFI_VARIABLE_AUTHENTICATION_2 (TimeStamp, then a WIN_CERTIFICATE_UEFI_GUID of type
    EFI_CERT_TYPE_PKCS7_GUID carrying `signed_data`), followed by the variable's data."""
    length = _WIN_CERT_HEADER.size + 16 + len(signed_data)
    auth_info = (
        _WIN_CERT_HEADER.pack(length, _WIN_CERT_REVISION, _WIN_CERT_TYPE_EFI_GUID)
        + EFI_CERT_TYPE_PKCS7_GUID.bytes_le
        + signed_data
    )
    return timestamp + auth_info + data


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start, end) of the value of the DER element at `at`."""
    if at + 2 > len(der):
        raise ValueError("DER element cut short")
    tag, first = der[at], der[at + 1]
    if first < 0x80:
        start = at + 2
        return tag, start, start + first
    count = first & 0x7F
    if not 1 <= count <= 4:
        raise ValueError("DER length out of range")
    start = at + 2 + count
    return tag, start, start + int.from_bytes(der[at + 2 : start], "big")


def signed_data_of(content_info: bytes) -> bytes:
    """The SignedData inside a DER PKCS#7 ContentInfo.

    openssl writes a ContentInfo (OID signedData + [0] SignedData); the UEFI spec wants CertData
    to be the bare SignedData, as efitools' sign-efi-sig-list and Microsoft's signed updates
    carry it. (EDK2 and U-Boot accept both; firmware that follows the spec to the letter need
    not.) Raises ValueError when `content_info` is not a ContentInfo of a SignedData."""
    tag, start, end = _element(content_info, 0)
    if tag != 0x30 or end != len(content_info):
        raise ValueError("not one DER SEQUENCE")
    if content_info[start : start + len(_SIGNED_DATA_OID)] != _SIGNED_DATA_OID:
        raise ValueError("not a PKCS#7 signedData ContentInfo")
    tag, explicit_start, explicit_end = _element(content_info, start + len(_SIGNED_DATA_OID))
    if tag != 0xA0 or explicit_end != end:
        raise ValueError("ContentInfo without its [0] content")
    tag, _, inner_end = _element(content_info, explicit_start)
    if tag != 0x30 or inner_end != explicit_end:
        raise ValueError("ContentInfo content is not one SignedData SEQUENCE")
    return content_info[explicit_start:explicit_end]
