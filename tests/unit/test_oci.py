"""OCI layouts and archives: image selection, digest checks, decompression, layer order."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

import pytest

from kairos_build.core.errors import InputError
from kairos_build.source import image
from kairos_build.source.oci import image_config_digest, unpack_image
from tests.unit.ocihelp import (
    CAP_NET_RAW_EP,
    Layout,
    digest_of,
    dir_,
    entry,
    layer_tar,
    reg,
    sym,
    whiteout,
)

Writer = Callable[[Layout, Path], Path]


def as_dir(layout: Layout, tmp_path: Path) -> Path:
    return layout.write_dir(tmp_path / "layout")


def as_archive(layout: Layout, tmp_path: Path) -> Path:
    return layout.write_archive(tmp_path / "image.tar")


def as_dot_archive(layout: Layout, tmp_path: Path) -> Path:
    return layout.write_archive(tmp_path / "image.tar", prefix="./")


@pytest.fixture(params=[as_dir, as_archive, as_dot_archive], ids=["dir", "archive", "dot-archive"])
def write(request: pytest.FixtureRequest) -> Writer:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def target(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    return tmp_path / "rootfs"


def simple_image(layout: Layout, text: str, compression: str = "gzip") -> dict[str, Any]:
    return layout.image(layer_tar(reg("etc/which", text.encode())), compression=compression, label=text)


# --- unpacking -----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layers_apply_in_order(tmp_path: Path, target: Path, write: Writer, compression: str) -> None:
    layout = Layout()
    base = layer_tar(
        dir_("etc", mtime=100),
        reg("etc/os-release", b"ID=base\n"),
        reg("etc/old", b"x"),
        reg("usr/bin/ping", b"elf", mode=0o4755, uid=0, xattrs={"security.capability": CAP_NET_RAW_EP}),
    )
    top = layer_tar(reg("etc/os-release", b"ID=top\n"), whiteout("etc/.wh.old"), sym("bin", "usr/bin"))
    layout.add(layout.image(base, top, compression=compression))
    unpack_image(write(layout, tmp_path), None, target)
    assert (target / "etc" / "os-release").read_text() == "ID=top\n"
    assert not (target / "etc" / "old").exists()
    assert os.readlink(target / "bin") == "usr/bin"
    assert os.stat(target / "bin" / "ping").st_mode & 0o7777 == 0o4755
    assert os.getxattr(target / "usr" / "bin" / "ping", "security.capability") == CAP_NET_RAW_EP


def test_mixed_compressions_in_one_image(tmp_path: Path, target: Path) -> None:
    layout = Layout()
    layers = [layer_tar(reg(f"layer{n}", str(n).encode()), reg("last", str(n).encode())) for n in range(3)]
    layout.add(layout.image(*layers, compression=["zstd", "none", "gzip"]))
    unpack_image(layout.write_dir(tmp_path / "l"), None, target)
    assert sorted(os.listdir(target)) == ["last", "layer0", "layer1", "layer2"]
    assert (target / "last").read_text() == "2"


def test_a_large_layer_streams_through(tmp_path: Path, target: Path) -> None:
    big = os.urandom(3 << 20)
    layout = Layout()
    layout.add(layout.image(layer_tar(reg("big", big)), compression="zstd"))
    unpack_image(layout.write_archive(tmp_path / "a.tar"), None, target)
    assert (target / "big").read_bytes() == big


def test_an_image_without_layers_unpacks_to_nothing(tmp_path: Path, target: Path) -> None:
    layout = Layout()
    layout.add(layout.image())
    unpack_image(layout.write_dir(tmp_path / "l"), None, target)
    assert os.listdir(target) == []


# --- choosing the image --------------------------------------------------------------------


def test_a_tag_selects_the_image(tmp_path: Path, target: Path, write: Writer) -> None:
    layout = Layout()
    first, second = simple_image(layout, "first"), simple_image(layout, "second")
    layout.add(first, tag="v1")
    layout.add(second, tag="v2")
    path = write(layout, tmp_path)
    assert image_config_digest(path, "v2") == layout.config_digest(second)
    assert image_config_digest(path, "v1") == layout.config_digest(first)
    unpack_image(path, "v2", target)
    assert (target / "etc" / "which").read_text() == "second"


def test_a_single_untagged_image_needs_no_tag(tmp_path: Path, write: Writer) -> None:
    layout = Layout()
    only = simple_image(layout, "only")
    layout.add(only)
    digest = image_config_digest(write(layout, tmp_path), None)
    assert digest == layout.config_digest(only)
    assert digest.startswith("sha256:") and len(digest) == 71


def test_a_missing_tag_is_named(tmp_path: Path, write: Writer) -> None:
    layout = Layout()
    layout.add(simple_image(layout, "x"), tag="v1")
    with pytest.raises(InputError, match="no image tagged 'v9'"):
        image_config_digest(write(layout, tmp_path), "v9")


def test_several_untagged_images_demand_a_tag(tmp_path: Path, target: Path) -> None:
    layout = Layout()
    layout.add(simple_image(layout, "a"))
    layout.add(simple_image(layout, "b"))
    path = layout.write_dir(tmp_path / "l")
    with pytest.raises(InputError, match="several images") as err:
        unpack_image(path, None, target)
    assert err.value.hint is not None and "TAG" in err.value.hint
    assert os.listdir(target) == []


def test_a_nested_index_picks_linux_amd64(tmp_path: Path, target: Path, write: Writer) -> None:
    layout = Layout()
    arm, amd = simple_image(layout, "arm64"), simple_image(layout, "amd64")
    attestation = simple_image(layout, "attestation")
    nested = layout.index(
        entry(arm, platform="linux/arm64"),
        entry(attestation, platform="unknown/unknown"),
        entry(amd, platform="linux/amd64"),
    )
    layout.add(nested, tag="latest")
    path = write(layout, tmp_path)
    assert image_config_digest(path, "latest") == layout.config_digest(amd)
    assert image_config_digest(path, None) == layout.config_digest(amd)
    assert image_config_digest(path, None, "linux/arm64") == layout.config_digest(arm)
    unpack_image(path, "latest", target)
    assert (target / "etc" / "which").read_text() == "amd64"


def test_top_level_platforms_are_honoured(tmp_path: Path) -> None:
    layout = Layout()
    arm, amd = simple_image(layout, "arm64"), simple_image(layout, "amd64")
    layout.add(arm, platform="linux/arm64")
    layout.add(amd, platform="linux/amd64")
    assert image_config_digest(layout.write_dir(tmp_path / "l"), None) == layout.config_digest(amd)


def test_no_image_for_the_platform(tmp_path: Path) -> None:
    layout = Layout()
    layout.add(layout.index(entry(simple_image(layout, "arm"), platform="linux/arm64")))
    with pytest.raises(InputError, match="no image for platform linux/amd64"):
        image_config_digest(layout.write_dir(tmp_path / "l"), None)


def test_an_empty_index_has_no_image(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no image"):
        image_config_digest(Layout().write_dir(tmp_path / "l"), None)


def test_a_manifest_without_config_is_an_input_error(tmp_path: Path) -> None:
    layout = Layout()
    layout.add(
        layout.blob(
            json.dumps({"schemaVersion": 2, "layers": []}).encode(),
            "application/vnd.oci.image.manifest.v1+json",
        )
    )
    with pytest.raises(InputError, match="no config"):
        image_config_digest(layout.write_dir(tmp_path / "l"), None)


def test_a_manifest_without_layers_is_an_input_error(tmp_path: Path, target: Path) -> None:
    layout = Layout()
    layout.add(
        layout.blob(
            json.dumps({"config": {"digest": digest_of(b"{}")}}).encode(),
            "application/vnd.oci.image.manifest.v1+json",
        )
    )
    with pytest.raises(InputError, match="lists no layers"):
        unpack_image(layout.write_dir(tmp_path / "l"), None, target)


# --- broken or hostile layouts -------------------------------------------------------------


def flip_byte(blob: Path, offset: int) -> None:
    data = bytearray(blob.read_bytes())
    data[offset % len(data)] ^= 0x55
    blob.write_bytes(bytes(data))


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("where", [0.02, 0.5, 0.98])
def test_a_flipped_byte_in_a_layer_is_corrupt(
    tmp_path: Path, target: Path, compression: str, where: float
) -> None:
    layout = Layout()
    manifest = layout.image(
        layer_tar(reg("a", os.urandom(4000)), reg("b", b"text " * 2000)), compression=compression
    )
    layout.add(manifest)
    path = layout.write_dir(tmp_path / "l")
    blob = path / "blobs" / "sha256" / layout.layer_digests(manifest)[0].removeprefix("sha256:")
    flip_byte(blob, int(blob.stat().st_size * where))
    with pytest.raises(InputError, match="corrupt"):
        unpack_image(path, None, target)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_corruption_anywhere_in_a_compressed_layer_is_called_corrupt(
    tmp_path: Path, target: Path, compression: str
) -> None:
    # Compressible text: a flipped bit then breaks the decoder in every way it can break
    # (zlib errors, CRC mismatches, early ends, garbage tar headers), not just the digest.
    text = b"".join(b"line %d of some text\n" % n for n in range(20000))
    layout = Layout()
    manifest = layout.image(layer_tar(reg("a", text)), compression=compression)
    layout.add(manifest)
    path = layout.write_dir(tmp_path / "l")
    blob = path / "blobs" / "sha256" / layout.layer_digests(manifest)[0].removeprefix("sha256:")
    good = blob.read_bytes()
    for offset in range(5, len(good), max(1, len(good) // 60)):
        blob.write_bytes(good)
        flip_byte(blob, offset)
        shutil.rmtree(target)
        target.mkdir()
        with pytest.raises(InputError, match="corrupt"):
            unpack_image(path, None, target)


def test_a_corrupt_layer_in_an_archive(tmp_path: Path, target: Path) -> None:
    layout = Layout()
    manifest = simple_image(layout, "payload" * 100, compression="none")
    layout.add(manifest)
    digest = layout.layer_digests(manifest)[0]
    layout.blobs[digest] = layout.blobs[digest].replace(b"payload", b"PAYLOAD", 1)
    with pytest.raises(InputError, match=f"blob {digest} is corrupt"):
        unpack_image(layout.write_archive(tmp_path / "a.tar"), None, target)


def test_a_corrupt_manifest_is_refused(tmp_path: Path) -> None:
    layout = Layout()
    manifest = simple_image(layout, "x")
    layout.add(manifest)
    path = layout.write_dir(tmp_path / "l")
    blob = path / "blobs" / "sha256" / manifest["digest"].removeprefix("sha256:")
    blob.write_bytes(blob.read_bytes().replace(b"schemaVersion", b"schemaVersioN"))
    with pytest.raises(InputError, match="corrupt"):
        image_config_digest(path, None)


def test_a_missing_blob_is_named(tmp_path: Path, target: Path, write: Writer) -> None:
    layout = Layout()
    manifest = simple_image(layout, "x")
    layout.add(manifest)
    missing = layout.layer_digests(manifest)[0]
    del layout.blobs[missing]
    with pytest.raises(InputError, match=missing.removeprefix("sha256:")):
        unpack_image(write(layout, tmp_path), None, target)


def test_a_missing_index_is_an_input_error(tmp_path: Path) -> None:
    layout = Layout()
    layout.add(simple_image(layout, "x"))
    path = layout.write_dir(tmp_path / "l")
    (path / "index.json").unlink()
    with pytest.raises(InputError, match="no index.json"):
        image_config_digest(path, None)
    archive = tmp_path / "no-index.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(path, arcname=".")
    with pytest.raises(InputError, match="no index.json"):
        image_config_digest(archive, None)


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]"])
def test_a_broken_index_is_an_input_error(tmp_path: Path, content: bytes) -> None:
    path = Layout().write_dir(tmp_path / "l")
    (path / "index.json").write_bytes(content)
    with pytest.raises(InputError, match="index.json"):
        image_config_digest(path, None)


def test_a_missing_path_or_garbage_archive(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        image_config_digest(tmp_path / "nothing", None)
    (tmp_path / "junk.tar").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="not a readable OCI archive"):
        image_config_digest(tmp_path / "junk.tar", None)


@pytest.mark.parametrize(
    "digest", ["sha512:" + "a" * 128, "sha256:abc", "sha256:../../x", "md5:d41d8cd98f00b204e9800998ecf8427e"]
)
def test_unsupported_digests_are_refused(tmp_path: Path, digest: str) -> None:
    layout = Layout()
    layout.blob(b"{}", "application/vnd.oci.image.config.v1+json")  # so that blobs/ exists
    layout.add({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest})
    with pytest.raises(InputError, match="malformed digest"):
        image_config_digest(layout.write_dir(tmp_path / "l"), None)


class Hung(BaseException):
    """Not an OSError: the code under test must not be able to swallow it."""


@pytest.fixture
def alarm() -> Iterator[None]:
    def hung(signum: int, frame: FrameType | None) -> None:
        raise Hung

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_digest_cannot_name_a_file_outside_the_layout(tmp_path: Path, alarm: None) -> None:
    # Opening a FIFO blocks until a writer comes: had the digest been used as a path, we hang.
    (tmp_path / "x").mkdir()
    os.mkfifo(tmp_path / "x" / ("a" * 64))
    layout = Layout()
    layout.blob(b"{}", "application/vnd.oci.image.config.v1+json")  # so that blobs/ exists
    layout.add({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "../../x:" + "a" * 64})
    with pytest.raises(InputError, match="malformed digest"):
        image_config_digest(layout.write_dir(tmp_path / "l"), None)


def test_a_host_error_while_writing_is_not_blamed_on_the_image(
    tmp_path: Path, target: Path, write: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(stream: IO[bytes], root: Path, name: str) -> None:
        stream.read(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image, "apply_layer", disk_full)
    layout = Layout()
    layout.add(simple_image(layout, "x"))
    with pytest.raises(OSError) as err:
        unpack_image(write(layout, tmp_path), None, target)
    assert err.value.errno == errno.ENOSPC


def test_a_hostile_layer_is_refused_through_unpack_image(tmp_path: Path, target: Path) -> None:
    layout = Layout()
    layout.add(layout.image(layer_tar(reg("ok")), layer_tar(reg("../evil", b"x"))))
    with pytest.raises(InputError, match=r"layer 2/2 \(sha256:.*'\.\./evil'"):
        unpack_image(layout.write_dir(tmp_path / "l"), None, target)
    assert not (tmp_path / "evil").exists()
