"""Read PE (EFI) images from an untrusted rootfs: Authenticode signers and grub's embedded parts.

Standard library only. Every read is bounded and every offset checked against the file, so a
garbage, truncated or hostile file gives None or [] and never an exception. Callers resolve
paths inside a rootfs with kairos_build.core.rootfs.resolve_in first; this module only refuses
what is not a regular file (a FIFO would block, a device would never end).
"""

from __future__ import annotations

import io
import lzma
import os
import stat
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_MAX_HEADERS = 1 << 20  # bytes of optional header + section table we read at most
_MAX_SECTIONS = 96  # the PE format's own limit for images
_MAX_CERT_TABLE = 4 << 20  # Authenticode tables are a few KiB (shim: two signatures, 19 KiB)
_MAX_GRUB_MODULES = 4096
_MAX_MEMDISK = 64 << 20
_MAX_NESTING = 4  # nested Authenticode signatures inside signatures
_PE32, _PE32_PLUS = 0x10B, 0x20B
_DIRECTORY_SECURITY = 4
_WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002

# grub-mkimage's `mods` section: struct grub_module_info64, then {u32 type; u32 size} modules.
_GRUB_MODULE_MAGIC = 0x676D696D  # "mimg"
GRUB_MODULE_ELF, GRUB_MODULE_MEMDISK, GRUB_MODULE_CONFIG, GRUB_MODULE_PREFIX = 0, 1, 2, 3

# DER object identifiers, as their encoded bytes.
_OID_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2
_OID_NESTED_SIGNATURE = bytes.fromhex("2b060104018237020401")  # 1.3.6.1.4.1.311.2.4.1
_OID_COMMON_NAME = bytes.fromhex("550403")  # 2.5.4.3
_SEQUENCE, _SET, _OID, _INTEGER = 0x30, 0x31, 0x06, 0x02
_CONTEXT_0, _CONTEXT_1 = 0xA0, 0xA1
_STRING_CODECS = {
    0x0C: "utf-8",
    0x13: "ascii",
    0x14: "latin-1",
    0x16: "ascii",
    0x1E: "utf-16-be",
    0x1C: "utf-32-be",
}


@dataclass(frozen=True)
class _Section:
    name: str
    offset: int  # in the file
    size: int  # raw size, cut to what the file holds
    virtual_size: int = 0  # what is loaded: the content without the file alignment's padding


@dataclass(frozen=True)
class _Image:
    size: int
    security: tuple[int, int] | None  # (file offset, size) of the certificate table
    sections: tuple[_Section, ...]


def authenticode_signers(path: Path) -> list[str] | None:
    """The subject common names of an EFI image's Authenticode certificates: for each
    signature, its signer's first, then the other certificates it carries, without repeats.

    None when `path` is not a PE image; [] when it is one without a signature (no certificate
    table, or one that points at nothing valid)."""
    try:
        with _open_regular(path) as handle:
            image = _read_image(handle)
            if image is None:
                return None
            if image.security is None:
                return []
            offset, size = image.security
            table = _read_at(handle, offset, size)
    except OSError:
        return None
    names: list[str] = []
    for certificate in _pkcs_signed_data(table):
        for name in _signature_names(certificate, 0):
            if name not in names:
                names.append(name)
    return names


def section_contents(path: Path) -> dict[str, tuple[int, int]] | None:
    """Each section's (file offset, size of its content): the loaded size, not the padded one
    (what systemd-stub measures of a UKI). The first section of a name wins; None when `path`
    is not a PE image."""
    try:
        with _open_regular(path) as handle:
            image = _read_image(handle)
    except OSError:
        return None
    if image is None:
        return None
    found: dict[str, tuple[int, int]] = {}
    for section in image.sections:
        found.setdefault(section.name, (section.offset, min(section.virtual_size, section.size)))
    return found


def is_signed(path: Path) -> bool:
    """A PE image with at least one Authenticode signature."""
    return bool(authenticode_signers(path))


def grub_prefix(path: Path) -> str | None:
    """The prefix grub-mkimage embedded (`--prefix`, e.g. /EFI/debian), or None."""
    data = _first_grub_module(path, GRUB_MODULE_PREFIX, 4096)
    return _c_string(data) if data is not None else None


def grub_embedded_config(path: Path) -> str | None:
    """The config grub-mkimage embedded (`--config`), or None. When that config reads a file
    from the memdisk (`(memdisk)/grub.cfg`, as Debian's signed images do) and the memdisk is a
    tar, FAT or squashfs image we can read, that file's text follows after a comment line."""
    data = _first_grub_module(path, GRUB_MODULE_CONFIG, 1 << 20)
    if data is None:
        return None
    config = _c_string(data)
    marker = "(memdisk)/"
    if marker not in config:
        return config
    words = config.split(marker, 1)[1].split()
    wanted = words[0] if words else ""
    memdisk = _first_grub_module(path, GRUB_MODULE_MEMDISK, _MAX_MEMDISK)
    inner = _memdisk_file(memdisk, wanted) if memdisk and wanted else None
    if inner is None:
        return config
    text = inner.decode("utf-8", errors="replace")
    return f"{config.rstrip()}\n# (memdisk)/{wanted}:\n{text}"


# --- the PE container -------------------------------------------------------------------------


def _open_regular(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_at(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


def _u16(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", data, at)[0])


def _u32(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])


def _read_image(handle: BinaryIO) -> _Image | None:
    """The headers of a PE32 or PE32+ image, every offset checked; None when it is not one."""
    size = os.fstat(handle.fileno()).st_size
    dos = _read_at(handle, 0, 64)
    if len(dos) < 64 or dos[:2] != b"MZ":
        return None
    pe = _u32(dos, 0x3C)
    coff = _read_at(handle, pe, 24) if pe + 24 <= size else b""
    if len(coff) < 24 or coff[:4] != b"PE\0\0":
        return None
    sections_count, optional_size = _u16(coff, 6), _u16(coff, 20)
    table_size = min(sections_count, _MAX_SECTIONS) * 40
    headers = _read_at(handle, pe + 24, min(optional_size + table_size, _MAX_HEADERS))
    if len(headers) < 2:
        return None
    magic = _u16(headers, 0)
    if magic not in (_PE32, _PE32_PLUS):
        return None
    count_at = 92 if magic == _PE32 else 108  # NumberOfRvaAndSizes, then the data directories
    security = None
    if optional_size >= count_at + 4 and len(headers) >= count_at + 4:
        directories = _u32(headers, count_at)
        entry = count_at + 4 + 8 * _DIRECTORY_SECURITY
        if directories > _DIRECTORY_SECURITY and optional_size >= entry + 8 and len(headers) >= entry + 8:
            # The one data directory that holds a file offset, not an RVA.
            offset, length = _u32(headers, entry), _u32(headers, entry + 4)
            if length >= 8 and offset + length <= size and length <= _MAX_CERT_TABLE:
                security = (offset, length)
    elif optional_size < 2:
        return None
    sections = []
    for index in range(min(sections_count, _MAX_SECTIONS)):
        at = optional_size + 40 * index
        if at + 40 > len(headers):
            break
        name = headers[at : at + 8].split(b"\0", 1)[0].decode("ascii", errors="replace")
        virtual_size = _u32(headers, at + 8)
        raw_size, raw_offset = _u32(headers, at + 16), _u32(headers, at + 20)
        if raw_offset < size:
            sections.append(_Section(name, raw_offset, min(raw_size, size - raw_offset), virtual_size))
    return _Image(size, security, tuple(sections))


def _pkcs_signed_data(table: bytes) -> Iterator[bytes]:
    """The PKCS#7 blobs of the WIN_CERTIFICATE entries (each 8-byte aligned) of a table."""
    at = 0
    while at + 8 <= len(table):
        length, _revision, kind = struct.unpack_from("<IHH", table, at)
        if length < 8 or at + length > len(table):
            return
        if kind == _WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            yield table[at + 8 : at + length]
        at += (length + 7) & ~7


# --- a best-effort DER walk -------------------------------------------------------------------


@dataclass(frozen=True)
class _Tlv:
    tag: int
    start: int  # of the whole element
    body: int  # first byte of the content
    end: int


def _tlv(data: bytes, at: int, end: int) -> _Tlv | None:
    """The DER element at `at` (low tag numbers, definite lengths only), inside `end`."""
    if at + 2 > end:
        return None
    tag, first = data[at], data[at + 1]
    if tag & 0x1F == 0x1F:
        return None
    body = at + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or body + count > end:
            return None
        length = int.from_bytes(data[body : body + count], "big")
        body += count
    if body + length > end:
        return None
    return _Tlv(tag, at, body, body + length)


def _children(data: bytes, parent: _Tlv | None) -> list[_Tlv]:
    at, end = (parent.body, parent.end) if parent else (0, len(data))
    found = []
    while at < end:
        element = _tlv(data, at, end)
        if element is None:
            break
        found.append(element)
        at = element.end
    return found


def _raw(data: bytes, element: _Tlv) -> bytes:
    return data[element.start : element.end]


def _signature_names(der: bytes, depth: int) -> list[str]:
    """Names in one ContentInfo(SignedData): the signers' certificates, the rest, then those
    of nested signatures (Microsoft's SPC_NESTED_SIGNATURE attribute)."""
    info = _children(der, None)
    if not info or info[0].tag != _SEQUENCE:
        return []
    parts = _children(der, info[0])
    if (
        len(parts) < 2
        or parts[0].tag != _OID
        or der[parts[0].body : parts[0].end] != _OID_SIGNED_DATA
        or parts[1].tag != _CONTEXT_0
    ):
        return []
    wrapped = _children(der, parts[1])
    if not wrapped or wrapped[0].tag != _SEQUENCE:
        return []
    fields = _children(der, wrapped[0])
    certificates = [c for f in fields if f.tag == _CONTEXT_0 for c in _children(der, f) if c.tag == _SEQUENCE]
    signer_infos = [s for f in fields[3:] if f.tag == _SET for s in _children(der, f) if s.tag == _SEQUENCE]
    described = [_describe_certificate(der, c) for c in certificates]
    signers: list[str] = []
    nested: list[str] = []
    for info_element in signer_infos:
        parts = _children(der, info_element)
        sid = _children(der, parts[1]) if len(parts) > 1 and parts[1].tag == _SEQUENCE else []
        if len(sid) == 2:
            wanted = (_raw(der, sid[0]), _raw(der, sid[1]))
            signers += [name for issuer_serial, name in described if issuer_serial == wanted and name]
        if depth < _MAX_NESTING:
            for attributes in (p for p in parts if p.tag == _CONTEXT_1):
                for attribute in _children(der, attributes):
                    kids = _children(der, attribute)
                    if len(kids) == 2 and der[kids[0].body : kids[0].end] == _OID_NESTED_SIGNATURE:
                        for value in _children(der, kids[1]):
                            nested += _signature_names(_raw(der, value), depth + 1)
    names = signers + [name for _, name in described if name]
    if not names and signer_infos:
        names = ["(a signer whose certificate is not included)"]
    return names + nested


def _describe_certificate(der: bytes, certificate: _Tlv) -> tuple[tuple[bytes, bytes], str | None]:
    """((issuer, serial) as DER, the subject's common name) of an X.509 certificate."""
    parts = _children(der, certificate)
    tbs = _children(der, parts[0]) if parts and parts[0].tag == _SEQUENCE else []
    if tbs and tbs[0].tag == _CONTEXT_0:  # the optional explicit version
        tbs = tbs[1:]
    if len(tbs) < 5 or tbs[0].tag != _INTEGER:
        return (b"", b""), None
    serial, issuer, subject = tbs[0], tbs[2], tbs[4]
    return (_raw(der, issuer), _raw(der, serial)), _common_name(der, subject)


def _common_name(der: bytes, name: _Tlv) -> str | None:
    """The subject's CN, else its last attribute's value (some CAs name only O and OU)."""
    values: list[tuple[bytes, str]] = []
    for rdn in _children(der, name):
        for attribute in _children(der, rdn):
            kids = _children(der, attribute)
            if len(kids) == 2 and kids[0].tag == _OID and kids[1].tag in _STRING_CODECS:
                text = der[kids[1].body : kids[1].end].decode(_STRING_CODECS[kids[1].tag], errors="replace")
                values.append((der[kids[0].body : kids[0].end], text))
    common = [text for oid, text in values if oid == _OID_COMMON_NAME]
    if common:
        return common[0]
    return values[-1][1] if values else None


# --- grub-mkimage's embedded modules ----------------------------------------------------------


def _c_string(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _grub_modules(handle: BinaryIO, section: _Section) -> Iterator[tuple[int, int, int]]:
    """(type, file offset of the data, data size) of each module in grub's `mods` section."""
    info = _read_at(handle, section.offset, 24)
    if len(info) < 24:
        return
    magic, _padding, offset, total = struct.unpack("<IIQQ", info)
    if magic != _GRUB_MODULE_MAGIC:
        return
    end = min(total, section.size)
    at = offset
    for _ in range(_MAX_GRUB_MODULES):
        if at < 24 or at + 8 > end:
            return
        header = _read_at(handle, section.offset + at, 8)
        if len(header) < 8:
            return
        kind, size = struct.unpack("<II", header)
        if size < 8 or at + size > end:
            return
        yield kind, section.offset + at + 8, size - 8
        at += size


def _first_grub_module(path: Path, kind: int, limit: int) -> bytes | None:
    try:
        with _open_regular(path) as handle:
            image = _read_image(handle)
            if image is None:
                return None
            for section in image.sections:
                if section.name != "mods":
                    continue
                for found, offset, size in _grub_modules(handle, section):
                    if found == kind:
                        return _read_at(handle, offset, min(size, limit)) if size <= limit else None
    except OSError:
        return None
    return None


# --- files inside a memdisk (tar, FAT12/16, squashfs) ---------------------------------------------


def _memdisk_file(image: bytes, name: str) -> bytes | None:
    name = name.strip("/")
    if not name:
        return None
    try:
        if image[257:262] == b"ustar":
            return _tar_file(image, name)
        if image[:4] == b"hsqs":
            return _squashfs_file(image, name)
        if len(image) >= 512 and image[510:512] == b"\x55\xaa":
            return _fat_file(image, name)
    except (struct.error, ValueError, IndexError):  # a lie the checks above missed: no file
        return None
    return None


def _tar_file(image: bytes, name: str) -> bytes | None:
    try:
        with tarfile.open(fileobj=io.BytesIO(image), mode="r:") as archive:
            for member in archive:
                if member.isfile() and member.name.strip("./") == name and member.size <= _MAX_MEMDISK:
                    extracted = archive.extractfile(member)
                    return extracted.read() if extracted else None
    except (tarfile.TarError, OSError, ValueError):
        return None
    return None


def _fat_file(image: bytes, name: str) -> bytes | None:
    """A file of a FAT12/16 image's root folder, by its 8.3 name (mkfs.fat's memdisks)."""
    if "/" in name:
        return None
    sector, per_cluster = _u16(image, 11), image[13]
    reserved, fats, root_entries = _u16(image, 14), image[16], _u16(image, 17)
    fat_sectors, total = _u16(image, 22), _u16(image, 19) or _u32(image, 32)
    if sector not in (512, 1024, 2048, 4096) or per_cluster == 0 or fat_sectors == 0 or root_entries == 0:
        return None
    root = (reserved + fats * fat_sectors) * sector
    data = root + ((root_entries * 32 + sector - 1) // sector) * sector
    clusters = max(0, (total * sector - data) // (per_cluster * sector))
    twelve = clusters < 4085
    stem, _, suffix = name.upper().partition(".")
    wanted = stem.ljust(8)[:8].encode() + suffix.ljust(3)[:3].encode()
    for at in range(root, min(root + root_entries * 32, len(image) - 31), 32):
        entry = image[at : at + 32]
        if entry[0] == 0:
            return None
        if entry[:11] != wanted or entry[11] & 0x18:  # a volume label or a folder
            continue
        cluster, size = _u16(entry, 26), _u32(entry, 28)
        out = bytearray()
        fat = reserved * sector
        for _ in range(clusters + 1):
            if cluster < 2 or cluster - 2 >= clusters or len(out) >= size:
                break
            start = data + (cluster - 2) * per_cluster * sector
            out += image[start : start + per_cluster * sector]
            if twelve:
                pair = fat + cluster * 3 // 2
                value = _u16(image, pair) if pair + 2 <= len(image) else 0xFFF
                cluster = value >> 4 if cluster & 1 else value & 0xFFF
            else:
                pair = fat + cluster * 2
                cluster = _u16(image, pair) if pair + 2 <= len(image) else 0xFFFF
        return bytes(out[:size]) if len(out) >= size else None
    return None


def _decompress(kind: int, data: bytes, limit: int) -> bytes | None:
    """One squashfs block: gzip (1), lzma (2) or xz (4), the codecs Python has; at most `limit`."""
    try:
        if kind == 1:
            return zlib.decompressobj().decompress(data, limit)
        if kind in (2, 4):
            codec = lzma.FORMAT_ALONE if kind == 2 else lzma.FORMAT_XZ
            return lzma.LZMADecompressor(codec).decompress(data, limit)
    except (zlib.error, lzma.LZMAError, EOFError):
        return None
    return None


def _squashfs_file(image: bytes, name: str) -> bytes | None:
    """A file of a squashfs 4.0 image's root folder (Debian trixie's memdisks): small and
    best effort, every offset checked, at most _MAX_MEMDISK bytes out."""
    if "/" in name or len(image) < 96:
        return None
    _inodes, _time, block_size, _frags, kind = struct.unpack_from("<IIIIH", image, 4)
    (root_ref,) = struct.unpack_from("<Q", image, 32)
    inode_start, directory_start, fragment_start = struct.unpack_from("<QQQ", image, 64)

    def metadata(start: int, ref_block: int, offset: int, size: int) -> bytes | None:
        out, at = b"", start + ref_block
        while len(out) < offset + size and at + 2 <= len(image) and len(out) < _MAX_MEMDISK:
            header = _u16(image, at)
            length = header & 0x7FFF
            raw = image[at + 2 : at + 2 + length]
            block = raw if header & 0x8000 else _decompress(kind, raw, 8192)
            if block is None or length == 0:
                return None
            out, at = out + block, at + 2 + length
        return out[offset : offset + size] if len(out) > offset else None  # may come short

    def inode(ref: int) -> bytes | None:  # a header and up to 16 block sizes
        return metadata(inode_start, ref >> 16, ref & 0xFFFF, 32 + 4 * 16)

    root = inode(root_ref)
    if root is None or len(root) < 32 or _u16(root, 0) != 1:  # a basic folder
        return None
    start, _links, size, offset = struct.unpack_from("<IIHH", root, 16)
    listing = metadata(directory_start, start, offset, max(0, size - 3)) or b""
    at = 0
    while at + 12 <= len(listing):
        count, block, _number = struct.unpack_from("<III", listing, at)
        at += 12
        for _ in range(count + 1):
            if at + 8 > len(listing):
                return None
            entry_offset, _delta, _type, name_size = struct.unpack_from("<HhHH", listing, at)
            entry_name = listing[at + 8 : at + 9 + name_size].decode(errors="replace")
            at += 9 + name_size
            if entry_name == name:
                found = inode((block << 16) | entry_offset)
                return _squashfs_read(image, kind, block_size, fragment_start, found, metadata)
    return None


def _squashfs_read(
    image: bytes,
    kind: int,
    block_size: int,
    fragment_start: int,
    node: bytes | None,
    metadata: Callable[[int, int, int, int], bytes | None],
) -> bytes | None:
    if node is None or len(node) < 32 or _u16(node, 0) != 2:  # a basic file
        return None
    start, fragment, fragment_offset, size = struct.unpack_from("<IIII", node, 16)
    if size > _MAX_MEMDISK:
        return None
    whole = size // block_size if fragment != 0xFFFFFFFF else -(-size // block_size)
    out, at = b"", start
    if 32 + 4 * whole > len(node):  # more blocks than a memdisk's config needs
        return None
    for index in range(whole):
        word = _u32(node, 32 + 4 * index)
        length = word & 0xFFFFFF
        raw = image[at : at + length]
        block = raw if word & 0x1000000 else _decompress(kind, raw, block_size)
        if block is None:
            return None
        out, at = out + block, at + length
    if fragment != 0xFFFFFFFF:
        if fragment_start + 8 * (fragment // 512) + 8 > len(image):
            return None
        table = _u32(image, fragment_start + 8 * (fragment // 512))  # low half of the u64
        entry = metadata(table, 0, 16 * (fragment % 512), 16)
        if entry is None or len(entry) < 16:
            return None
        where, length = struct.unpack_from("<QI", entry, 0)
        raw = image[where : where + (length & 0xFFFFFF)]
        block = raw if length & 0x1000000 else _decompress(kind, raw, block_size)
        if block is None:
            return None
        out += block[fragment_offset : fragment_offset + size - len(out)]
    return out if len(out) == size else None
