"""The converted image writer: layers keep what a rootfs needs (file capabilities included)."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

from kairos_build.config.buildconfig import config_of
from kairos_build.convert.image_writer import (
    image_config,
    tar_directory,
    write_layer,
    write_oci_layout,
)
from kairos_build.source.oci import open_oci_image, unpack_image
from tests.unit.ocihelp import CAP_NET_RAW_EP

EPOCH = 1700000000


def write_archive(tree: Path, work: Path) -> tuple[bytes, Path]:
    """What `convert -o oci-archive:` writes for `tree` (layer, config, layout, tarred), and
    where its layer blob is."""
    work.mkdir()
    diff_id = write_layer(tree, work / "layer.tar", EPOCH)
    config = image_config(config_of({"flavor": "debian", "cache-dir": work}), diff_id, EPOCH)
    write_oci_layout(work / "layout", work / "layer.tar", diff_id, config, "v1")
    tar_directory(work / "layout", work / "image.tar", EPOCH)
    return (work / "image.tar").read_bytes(), work / "layout/blobs/sha256" / diff_id[7:]


def test_the_same_tree_gives_the_same_archive_on_another_day_and_path(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/kairos-release").write_text("KAIROS_VERSION=v1\n")  # dated now: clamped
    first, layer = write_archive(tree, tmp_path / "one")
    os.utime(tree / "etc", (EPOCH + 99, EPOCH + 99))  # a new atime and a newer mtime
    os.chown(tree / "etc/kairos-release", 0, 0)  # a new ctime
    second, _ = write_archive(tree, tmp_path / "elsewhere-two")
    assert first == second
    with tarfile.open(tmp_path / "one/image.tar") as outer:
        assert {m.mtime for m in outer.getmembers()} == {EPOCH}
        assert {(m.uid, m.gid, m.uname, m.gname) for m in outer.getmembers()} == {(0, 0, "", "")}
    with tarfile.open(layer) as inner:
        members = inner.getmembers()
        assert {m.name for m in members} >= {"./etc", "./etc/kairos-release"}
        assert max(m.mtime for m in members) <= EPOCH
        assert not any({"atime", "ctime"} & set(m.pax_headers) for m in members)


def test_layer_round_trip_keeps_capabilities_owners_modes_links(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    ping = tree / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF ping")
    os.chmod(ping, 0o755)
    os.setxattr(ping, "security.capability", CAP_NET_RAW_EP)
    su = tree / "usr/bin/su"
    su.write_bytes(b"su")
    os.chown(su, 0, 42)
    os.chmod(su, 0o4755)
    (tree / "bin").symlink_to("usr/bin")
    (tree / "home/user").mkdir(parents=True)
    os.chown(tree / "home/user", 1000, 1000)

    layer = tmp_path / "layer.tar"
    diff_id = write_layer(tree, layer, EPOCH)
    assert diff_id == write_layer(tree, tmp_path / "again.tar", EPOCH)  # same tree, same bytes
    config = image_config(config_of({"flavor": "debian", "cache-dir": tmp_path}), diff_id, EPOCH)
    write_oci_layout(tmp_path / "layout", layer, diff_id, config, "v1")
    assert open_oci_image(tmp_path / "layout", "v1").config_digest.startswith("sha256:")

    out = tmp_path / "out"
    out.mkdir()
    unpack_image(tmp_path / "layout", "v1", out)
    assert os.getxattr(out / "usr/bin/ping", "security.capability") == CAP_NET_RAW_EP
    st = os.lstat(out / "usr/bin/su")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_gid == 42
    assert os.readlink(out / "bin") == "usr/bin"
    assert os.lstat(out / "home/user").st_uid == 1000
    assert config["config"]["Labels"]["io.kairos.flavor"] == "debian"


def test_dockerfile_context_carries_the_conversion_data(tmp_path: Path) -> None:
    import pytest

    from kairos_build.core.errors import InputError
    from kairos_build.pipelines.dockerfile import write_build_context

    config = config_of({"flavor": "debian", "release": "bookworm", "version": "1.2.3", "cache-dir": tmp_path})
    dockerfile = write_build_context(config, tmp_path / "ctx", "docker://example/base:1")
    text = dockerfile.read_text()
    assert "FROM example/base:1" in text
    for package in config.flavor.all_packages():
        assert f" {package} " in text or f" {package}\n" in text or f" {package} \\" in text
    assert "systemctl preset kairos-boot-report.service" in text
    release = (tmp_path / "ctx/kairos-release").read_text()
    assert 'KAIROS_VERSION="v1.2.3"' in release and 'KAIROS_FLAVOR_RELEASE="12"' in release
    assert (tmp_path / "ctx/overlay/etc/dracut.conf.d/10-kairos.conf").is_file()
    with pytest.raises(InputError, match="not empty"):
        write_build_context(config, tmp_path / "ctx")
