"""The PE reader on real files: grub-mkimage's output, signed with sbsign (or by hand with
openssl when sbsign is missing), and on files that are cut, lie or are not PE at all."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from kairos_build.core.pe import authenticode_signers, grub_embedded_config, grub_prefix, is_signed

TEST_SIGNER = "kairos-build test signer"


def grub_image(out: Path, prefix: str, config: str | None = None, memdisk: Path | None = None) -> Path:
    """An unsigned x86_64 grub EFI image from the host's grub-mkimage."""
    if shutil.which("grub-mkimage") is None or not Path("/usr/lib/grub/x86_64-efi").is_dir():
        pytest.skip("grub-mkimage with x86_64-efi modules (grub-common, grub-efi-amd64-bin) not installed")
    command = ["grub-mkimage", "-O", "x86_64-efi", "-p", prefix, "-o", str(out)]
    if config is not None:
        cfg = out.with_suffix(".cfg")
        cfg.write_text(config)
        command += ["-c", str(cfg)]
    if memdisk is not None:
        command += ["-m", str(memdisk)]
    subprocess.run([*command, "normal"], check=True, capture_output=True)
    return out


def make_key(folder: Path, common_name: str = TEST_SIGNER) -> tuple[Path, Path]:
    """A throw-away RSA key and self-signed certificate."""
    key, cert = folder / "test.key", folder / "test.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/O=kairos-build tests/CN={common_name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def sbsign(image: Path, out: Path, key: Path, cert: Path) -> Path:
    if shutil.which("sbsign") is None:
        pytest.skip("sbsign (package sbsigntool) not installed")
    subprocess.run(
        ["sbsign", "--key", str(key), "--cert", str(cert), "--output", str(out), str(image)],
        check=True,
        capture_output=True,
    )
    return out


def _security_entry(data: bytes) -> int:
    """The file offset of the security data directory entry (PE32 or PE32+)."""
    pe = int(struct.unpack_from("<I", data, 0x3C)[0])
    magic = int(struct.unpack_from("<H", data, pe + 24)[0])
    return pe + 24 + (96 if magic == 0x10B else 112) + 8 * 4


def cms_sign(image: Path, key: Path, cert: Path) -> bytes:
    """A DER PKCS#7 SignedData over the file, carrying the certificate, with openssl."""
    return subprocess.run(
        [
            "openssl",
            "cms",
            "-sign",
            "-binary",
            "-outform",
            "DER",
            "-signer",
            str(cert),
            "-inkey",
            str(key),
            "-in",
            str(image),
        ],
        check=True,
        capture_output=True,
    ).stdout


def append_signature(image: Path, out: Path, key: Path, cert: Path) -> Path:
    """What sbsign does, structurally: a PKCS#7 SignedData (here over the whole file, which is
    not Authenticode's digest: the reader does not verify) in a WIN_CERTIFICATE at the end."""
    data = bytearray(image.read_bytes())
    data += bytes(-len(data) % 8)
    signed = cms_sign(image, key, cert)
    entry = struct.pack("<IHH", 8 + len(signed), 0x0200, 0x0002) + signed
    entry += bytes(-len(entry) % 8)
    struct.pack_into("<II", data, _security_entry(bytes(data)), len(data), len(entry))
    out.write_bytes(bytes(data) + entry)
    return out


def sign(image: Path, out: Path, key: Path, cert: Path) -> Path:
    """sbsign when the host has it, else the same structure made with openssl."""
    if shutil.which("sbsign"):
        return sbsign(image, out, key, cert)
    return append_signature(image, out, key, cert)


def minimal_pe(magic: int, sections: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A PE32 (0x10b) or PE32+ (0x20b) image with 16 data directories and `sections`."""
    optional = 224 if magic == 0x10B else 240
    headers = 0x80 + 24 + optional + 40 * len(sections)
    data = bytearray(headers + (-headers % 512))
    data[:2] = b"MZ"
    struct.pack_into("<I", data, 0x3C, 0x80)
    struct.pack_into("<4sHHIIIHH", data, 0x80, b"PE\0\0", 0x8664, len(sections), 0, 0, 0, optional, 0x22)
    struct.pack_into("<H", data, 0x98, magic)
    struct.pack_into("<I", data, 0x98 + (92 if magic == 0x10B else 108), 16)
    for index, (name, body) in enumerate(sections):
        at = 0x98 + optional + 40 * index
        struct.pack_into("<8sIIII", data, at, name, len(body), 0x1000 * (index + 1), len(body), len(data))
        data += body + bytes(-len(body) % 512)
    return bytes(data)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_key(tmp_path_factory.mktemp("keys"))


def test_unsigned_grub_is_a_pe_without_signers(tmp_path: Path) -> None:
    image = grub_image(tmp_path / "grub.efi", "/EFI/test")
    assert authenticode_signers(image) == []
    assert not is_signed(image)


def test_sbsigned_grub_names_the_test_certificate(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    image = grub_image(tmp_path / "grub.efi", "/EFI/test")
    signed = sbsign(image, tmp_path / "grub.signed.efi", *keys)
    assert authenticode_signers(signed) == [TEST_SIGNER]
    assert is_signed(signed)
    assert grub_prefix(signed) == "/EFI/test"  # signing keeps the mods section


def test_a_second_signature_adds_its_signer_after_the_first(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    image = grub_image(tmp_path / "grub.efi", "/EFI/test")
    once = append_signature(image, tmp_path / "once.efi", *keys)
    other = make_key(tmp_path, "second signer")
    # a second WIN_CERTIFICATE in the same table, as shim's 2011 and 2023 signatures are
    data = bytearray(once.read_bytes())
    offset, size = struct.unpack_from("<II", data, _security_entry(bytes(data)))
    signed = cms_sign(image, *other)
    entry = struct.pack("<IHH", 8 + len(signed), 0x0200, 0x0002) + signed
    entry += bytes(-len(entry) % 8)
    struct.pack_into("<II", data, _security_entry(bytes(data)), offset, size + len(entry))
    twice = tmp_path / "twice.efi"
    twice.write_bytes(bytes(data) + entry)
    assert authenticode_signers(twice) == [TEST_SIGNER, "second signer"]


@pytest.mark.parametrize("magic", [0x10B, 0x20B])
def test_pe32_and_pe32_plus(tmp_path: Path, keys: tuple[Path, Path], magic: int) -> None:
    plain = tmp_path / "plain.efi"
    plain.write_bytes(minimal_pe(magic, ((b".text", b"\xc3" * 16),)))
    assert authenticode_signers(plain) == []
    signed = append_signature(plain, tmp_path / "signed.efi", *keys)
    assert authenticode_signers(signed) == [TEST_SIGNER]


def test_grub_prefix_and_config_from_grub_mkimage(tmp_path: Path) -> None:
    first = grub_image(tmp_path / "a.efi", "/EFI/test", config="set timeout=1\n")
    second = grub_image(tmp_path / "b.efi", "/boot/grub")
    assert grub_prefix(first) == "/EFI/test"
    assert grub_prefix(second) == "/boot/grub"
    assert grub_embedded_config(first) == "set timeout=1\n"
    assert grub_embedded_config(second) is None


def test_grub_config_from_a_tar_or_fat_memdisk(tmp_path: Path) -> None:
    inner = "search --file --set=root /.disk/info\nsource ($root)/boot/grub/grub.cfg\n"
    (tmp_path / "grub.cfg").write_text(inner)
    with tarfile.open(tmp_path / "memdisk.tar", "w") as archive:
        archive.add(tmp_path / "grub.cfg", arcname="grub.cfg")
    image = grub_image(
        tmp_path / "tar.efi",
        "/boot/grub",
        config="normal (memdisk)/grub.cfg\n",
        memdisk=tmp_path / "memdisk.tar",
    )
    assert grub_embedded_config(image) == f"normal (memdisk)/grub.cfg\n# (memdisk)/grub.cfg:\n{inner}"
    mkfs = shutil.which("mkfs.vfat", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if mkfs is None or shutil.which("mcopy") is None:
        pytest.skip("mkfs.vfat (dosfstools) or mcopy (mtools) not installed")
    fat = tmp_path / "memdisk.fat"
    # FAT12, as Debian's bookworm images carry
    subprocess.run([mkfs, "-C", str(fat), "512"], check=True, capture_output=True)
    subprocess.run(["mcopy", "-i", str(fat), str(tmp_path / "grub.cfg"), "::grub.cfg"], check=True)
    image = grub_image(tmp_path / "fat.efi", "/boot/grub", config="normal (memdisk)/grub.cfg\n", memdisk=fat)
    assert grub_embedded_config(image) == f"normal (memdisk)/grub.cfg\n# (memdisk)/grub.cfg:\n{inner}"


@pytest.mark.parametrize("compression", ["xz", "gzip"])
def test_grub_config_from_a_squashfs_memdisk(tmp_path: Path, compression: str) -> None:
    """Debian trixie's signed images carry their memdisk as an xz squashfs."""
    if shutil.which("mksquashfs", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        pytest.skip("mksquashfs (squashfs-tools) not installed")
    inner = "set prefix=($root)/boot/grub\n" * 3
    (tmp_path / "tree/fonts").mkdir(parents=True)
    (tmp_path / "tree/fonts/big.pf2").write_bytes(os.urandom(300_000))  # several blocks before it
    (tmp_path / "tree/grub.cfg").write_text(inner)
    memdisk = tmp_path / "memdisk.squashfs"
    subprocess.run(
        ["mksquashfs", str(tmp_path / "tree"), str(memdisk), "-comp", compression, "-noappend", "-quiet"],
        check=True,
        capture_output=True,
    )
    image = grub_image(
        tmp_path / "sq.efi", "/boot/grub", config="normal (memdisk)/grub.cfg\n", memdisk=memdisk
    )
    assert grub_embedded_config(image) == f"normal (memdisk)/grub.cfg\n# (memdisk)/grub.cfg:\n{inner}"
    data = bytearray(image.read_bytes())
    rng = random.Random(3)
    start = data.find(b"hsqs")
    for _ in range(200):  # a damaged memdisk is no file, never an exception
        copy = bytearray(data)
        end = start + 200 if rng.random() < 0.5 else len(data)
        copy[rng.randrange(start, end)] ^= 0xFF
        (tmp_path / "damaged").write_bytes(bytes(copy))
        grub_embedded_config(tmp_path / "damaged")


def test_not_pe_truncated_and_lying_files(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    text = tmp_path / "text"
    text.write_text("#!/bin/sh\n")
    assert authenticode_signers(text) is None and not is_signed(text) and grub_prefix(text) is None
    assert authenticode_signers(tmp_path / "missing") is None
    assert authenticode_signers(tmp_path) is None  # a folder
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert authenticode_signers(fifo) is None and grub_prefix(fifo) is None  # no writer: must not block
    mz = tmp_path / "mz"
    mz.write_bytes(b"MZ" + bytes(100))  # a DOS header whose PE header is at 0: not "PE\0\0"
    assert authenticode_signers(mz) is None

    signed = append_signature(grub_image(tmp_path / "grub.efi", "/EFI/test"), tmp_path / "signed.efi", *keys)
    data = signed.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[:0x90])  # inside the PE headers: not a PE image
    assert authenticode_signers(cut) is None and grub_prefix(cut) is None
    cut.write_bytes(data[:-100])  # the certificate table runs past the end: no signature
    assert authenticode_signers(cut) == []
    cut.write_bytes(data[:50000])  # the mods section is cut short: its modules are not trusted
    assert grub_prefix(cut) is None

    entry = _security_entry(data)
    for offset, size in ((len(data) * 4, 2000), (0xFFFFFFF0, 0xFFFF), (8, 0xFFFFFFFF), (0, 0)):
        lying = bytearray(data)
        struct.pack_into("<II", lying, entry, offset, size)
        (tmp_path / "lying").write_bytes(bytes(lying))
        assert authenticode_signers(tmp_path / "lying") == [], (offset, size)
    offset, _ = struct.unpack_from("<II", data, entry)
    for kind, body in ((0x0001, None), (0x0002, b"\x30\x82\xff\xff garbage")):
        lying = bytearray(data)
        struct.pack_into("<HH", lying, offset + 4, 0x0200, kind)  # X.509 type, or a PKCS#7 that lies
        if body:
            lying[offset + 8 : offset + 8 + len(body)] = body
        (tmp_path / "lying").write_bytes(bytes(lying))
        assert authenticode_signers(tmp_path / "lying") == []


def test_random_damage_never_raises(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    signed = append_signature(
        grub_image(tmp_path / "grub.efi", "/EFI/test", config="set a=b\n"), tmp_path / "signed.efi", *keys
    )
    data = signed.read_bytes()
    offset = struct.unpack_from("<I", data, _security_entry(data))[0]
    mods = data.find(b"mimg")
    rng = random.Random(12)
    damaged = tmp_path / "damaged"
    for round_ in range(300):
        copy = bytearray(data)
        region = ((0, 0x200), (offset, len(data)), (mods, mods + 512))[round_ % 3]
        for _ in range(rng.randint(1, 8)):
            copy[rng.randrange(*region)] = rng.randrange(256)
        damaged.write_bytes(bytes(copy))
        signers = authenticode_signers(damaged)
        assert signers is None or isinstance(signers, list)
        grub_prefix(damaged)
        grub_embedded_config(damaged)
