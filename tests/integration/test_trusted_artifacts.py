"""Trusted Boot artifacts from one real build (`--boot-mode trusted`, the `uki`, `uki-image`
and `raw` formats), checked with tools that are not ours: pefile reads the UKIs back, sbverify
checks their signatures, veritysetup checks the root image against the root hash the signed
command line carries, the image's own systemd-measure signs the PCR policy we signed
ourselves, and skopeo pushes the upgrade image to a real registry the agent's code pulls from."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pefile
import pytest

from kairos_build.agent import trusted as agent_trusted
from kairos_build.agent.images import source_tree
from kairos_build.agent.system import NodeError
from kairos_build.core.sandbox import run_in_root
from tests.conftest import run_cli
from tests.integration.test_disk_images import sh
from tests.integration.test_registry import (  # noqa: F401 - start_registry is a fixture
    REGISTRY_BIN,
    Registry,
    start_registry,
)

MiB = 1 << 20
ROLES = ("active", "passive", "recovery", "statereset")
KINDS = ("system", "recovery")
PRIVATE = ("PK.key", "KEK.key", "db.key", "tpm2-pcr-private.pem")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys") / "keys"
    result = run_cli("genkey", str(folder), "--name", "kairos-build-test")
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def trusted(
    keys: Path,
    test_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, Path, str]]:
    """The uki directory, the raw disk and the build's log (the uki-image beside them)."""
    out = tmp_path_factory.mktemp("trusted-out")
    result = run_cli(
        "build",
        "--format",
        "uki,uki-image,raw",
        "--boot-mode",
        "trusted",
        "--keys",
        str(keys),
        "--base",
        "bootstrap:debian/trixie",
        "--output",
        str(out),
        "--cache-dir",
        str(test_cache),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    folders = list(out.glob("*-uki"))
    disks = list(out.glob("*.raw"))
    assert len(folders) == 1 and len(disks) == 1, list(out.iterdir())
    yield folders[0], disks[0], result.stderr
    shutil.rmtree(out, ignore_errors=True)


def test_the_uki_folder_holds_the_esp_and_the_root_image(trusted: tuple[Path, Path, str]) -> None:
    folder = trusted[0]
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    ident = image_id(folder)
    expected = {
        "EFI/BOOT/BOOTX64.EFI",
        "loader/loader.conf",
        f"cOS/system-{ident}.img",
        "SHA256SUMS",
        *(f"EFI/kairos/{k}-{ident}.efi" for k in KINDS),
        *(f"loader/entries/{r}.conf" for r in ROLES),
        *(f"loader/keys/auto/{k}.auth" for k in ("PK", "KEK", "db")),
    }
    assert files == expected
    loader = (folder / "loader/loader.conf").read_text()
    # No default: the first entry by sort-key (active) unless its boot counter ran out.
    assert not re.search(r"^default ", loader, re.M)
    sort_keys = [
        re.search(r"^sort-key (\S+)$", (folder / f"loader/entries/{r}.conf").read_text(), re.M) for r in ROLES
    ]
    assert all(sort_keys)
    assert [m.group(1) for m in sort_keys if m] == sorted(m.group(1) for m in sort_keys if m)
    assert re.search(r"^secure-boot-enroll if-safe$", loader, re.M)
    for role in ROLES:
        entry = (folder / f"loader/entries/{role}.conf").read_text()
        kind = "system" if role in ("active", "passive") else "recovery"
        assert re.search(rf"^efi /EFI/kairos/{kind}-{ident}\.efi$", entry, re.M), entry


def image_id(folder: Path) -> str:
    """The 16 hex digits naming the images and UKIs (the start of the root hash)."""
    images = list((folder / "cOS").glob("system-*.img"))
    assert len(images) == 1, images
    return images[0].stem.removeprefix("system-")


def ukis(folder: Path) -> dict[str, Path]:
    return {kind: folder / f"EFI/kairos/{kind}-{image_id(folder)}.efi" for kind in KINDS}


def test_every_efi_file_is_signed_by_db_and_only_db(trusted: tuple[Path, Path, str], keys: Path) -> None:
    folder = trusted[0]
    for efi in [folder / "EFI/BOOT/BOOTX64.EFI", *ukis(folder).values()]:
        sh("sbverify", "--cert", str(keys / "db.pem"), str(efi))
        assert sh("sbverify", "--cert", str(keys / "KEK.pem"), str(efi), ok=False).returncode != 0


def uki_sections(path: Path) -> dict[str, bytes]:
    pe = pefile.PE(str(path), fast_load=True)
    try:
        align, file_align = pe.OPTIONAL_HEADER.SectionAlignment, pe.OPTIONAL_HEADER.FileAlignment
        found = {}
        for section in pe.sections:
            name = section.Name.rstrip(b"\0").decode()
            assert section.VirtualAddress % align == 0, name
            assert section.PointerToRawData % file_align == 0, name
            found[name] = section.get_data()[: section.Misc_VirtualSize]
        return found
    finally:
        pe.close()


def test_each_uki_is_small_and_pins_its_root_by_hash(trusted: tuple[Path, Path, str], tmp_path: Path) -> None:
    folder = trusted[0]
    image = folder / f"cOS/system-{image_id(folder)}.img"
    for kind, uki in ukis(folder).items():
        assert uki.stat().st_size < 100 * MiB, (kind, uki.stat().st_size)
        sections = uki_sections(uki)
        assert {".linux", ".initrd", ".cmdline", ".osrel", ".uname", ".sbat", ".pcrpkey", ".pcrsig"} <= set(
            sections
        ), sections.keys()
        cmdline = sections[".cmdline"].decode()
        assert ("kairos.entry=recovery" in cmdline) == (kind == "recovery")
        assert f"cos-img/filename=/{image.relative_to(folder)}" in cmdline.split()
        assert "rd.kairos.encrypt=tpm2" in cmdline
        roothash = re.search(r"kairos\.verity\.roothash=([0-9a-f]{64})", cmdline)
        offset = re.search(r"kairos\.verity\.hashoffset=(\d+)", cmdline)
        assert roothash and offset, cmdline
    assert roothash and offset  # the last UKI's, as checked in the loop
    # The tree and the hash on the (signed) command line agree; one changed byte breaks them.
    sh("veritysetup", "verify", f"--hash-offset={offset.group(1)}", str(image), str(image), roothash.group(1))
    changed = tmp_path / "changed.img"
    shutil.copyfile(image, changed)
    with changed.open("r+b") as handle:
        handle.seek(MiB + 17)
        byte = handle.read(1)
        handle.seek(MiB + 17)
        handle.write(bytes([byte[0] ^ 0x01]))
    assert (
        sh(
            "veritysetup",
            "verify",
            f"--hash-offset={offset.group(1)}",
            str(changed),
            str(changed),
            roothash.group(1),
            ok=False,
        ).returncode
        != 0
    )


def test_the_pcr_policy_is_what_systemd_measure_signs(
    trusted: tuple[Path, Path, str], keys: Path, test_cache: Path, tmp_path: Path
) -> None:
    """Our host-side signature of the PCR 11 policy, byte for byte the JSON the image's own
    `systemd-measure sign` makes from the same sections and key (RSA PKCS#1 v1.5 is
    deterministic): the test alone hands the image a key, a throwaway one of this test."""
    folder = trusted[0]
    sections = uki_sections(ukis(folder)["system"])
    work = tmp_path / "measure"
    work.mkdir()
    options = []
    for name in ("linux", "osrel", "cmdline", "initrd", "uname", "sbat", "pcrpkey"):
        (work / name).write_bytes(sections[f".{name}"])
        options.append(f"--{name}=/tmp/m/{name}")
    shutil.copyfile(keys / "tpm2-pcr-private.pem", work / "key.pem")
    (work / "key.pem").chmod(0o600)
    (work / "pub.pem").write_bytes(sections[".pcrpkey"])
    rootfs = next(
        p
        for p in (test_cache / "converted").iterdir()
        if (p / "usr/lib/systemd/systemd-measure").exists() and (p / "usr/bin/ukify").exists()
    )
    out = run_in_root(
        rootfs,
        [
            "/usr/lib/systemd/systemd-measure",
            "sign",
            *options,
            "--bank=sha256",
            "--private-key=/tmp/m/key.pem",
            "--public-key=/tmp/m/pub.pem",
            "--json=short",
        ],
        binds=[(work, "/tmp/m")],
        read_only=True,
    )
    theirs = json.loads(out.strip().splitlines()[-1])
    ours = json.loads(sections[".pcrsig"].rstrip(b"\0"))
    assert ours == theirs
    assert len(ours["sha256"]) == 4  # enter-initrd, leave-initrd, sysinit, ready
    for entry in ours["sha256"]:
        assert entry["pcrs"] == [11]
        assert len(base64.b64decode(entry["sig"])) == 256  # RSA 2048


def test_no_private_key_is_in_any_artifact(trusted: tuple[Path, Path, str], keys: Path) -> None:
    """Neither the PEM body nor the DER of any private key, anywhere in what the build wrote
    (read in chunks with an overlap: the disk is sparse, GBs of holes)."""
    needles = []
    for name in PRIVATE:
        text = (keys / name).read_text()
        body = "".join(line for line in text.splitlines() if not line.startswith("-----"))
        needles.append(body[:64].encode())
        needles.append(base64.b64decode(body)[:64])
    _folder, disk, _log = trusted
    # Every file the build wrote: the disk, the uki folder, and the SBOM and build manifest
    # beside each (the manifest names the keys folder).
    written = [p for p in disk.parent.rglob("*") if p.is_file()]
    assert {p.name.rsplit(".", 2)[-2] for p in written if p.suffix == ".json"} == {"spdx", "build"}
    for path in written:
        with path.open("rb") as handle:
            tail = b""
            while chunk := handle.read(64 * MiB):
                data = tail + chunk
                if data.strip(b"\0"):
                    for needle in needles:
                        assert needle not in data, (path, needle[:8])
                tail = data[-128:]


def test_the_disk_has_a_blank_persistent_partition_for_the_tpm(trusted: tuple[Path, Path, str]) -> None:
    disk = trusted[1]
    table = json.loads(sh("sfdisk", "--json", str(disk)).stdout)["partitiontable"]["partitions"]
    assert [p["name"] for p in table] == ["efi", "oem", "recovery", "state", "persistent"]
    persistent = table[-1]
    with disk.open("rb") as handle:
        handle.seek(int(persistent["start"]) * 512)
        head = handle.read(MiB)
    assert head.strip(b"\0") == b"", "COS_PERSISTENT must be blank: the node seals it itself"


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.skipif(
    not (Path(REGISTRY_BIN).exists() and shutil.which("skopeo")),
    reason="needs the Debian packages docker-registry and skopeo",
)
def test_the_uki_image_carries_the_folder_to_a_node_from_an_archive_or_a_registry(
    trusted: tuple[Path, Path, str],
    start_registry: Callable[..., Registry],  # noqa: F811
    tmp_path: Path,
) -> None:
    """`uki-image` is the `uki` folder as a one-layer OCI archive. skopeo (not ours) reads it
    and pushes it to Debian's docker-registry; the agent's own reader (what a Trusted Boot
    node runs for `upgrade --source`) gets the same files back from the archive and from the
    registry. An ordinary Kairos system image is refused as a Trusted Boot upgrade."""
    folder = trusted[0]
    archives = list(folder.parent.glob("*.uki.tar"))
    assert len(archives) == 1, list(folder.parent.iterdir())
    registry = start_registry()
    pushed = subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci-archive:{archives[0]}",
            f"docker://{registry.address}/kairos/uki:v1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr
    expected = digests(folder)
    del expected["SHA256SUMS"]  # the folder's own checksums, written beside what it holds
    for source in (f"oci-archive:{archives[0]}", f"docker://{registry.address}/kairos/uki:v1"):
        with source_tree(source, tmp_path / "scratch", require=agent_trusted.require_bundle) as tree:
            assert digests(tree) == expected, source
            uki, image = agent_trusted.bundle(tree, source)
            assert uki.name.replace(".efi", ".img") == image.name
    system = tmp_path / "system"
    (system / "etc").mkdir(parents=True)
    (system / "etc/kairos-release").write_text('KAIROS_VERSION="v9"\n')
    with (
        pytest.raises(NodeError, match="not a Trusted Boot upgrade") as refused,
        source_tree(f"dir:{system}", tmp_path / "s", require=agent_trusted.require_bundle),
    ):
        pass
    assert "uki-image" in (refused.value.hint or "")
