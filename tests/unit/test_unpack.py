"""apply_layer: one uncompressed layer tar, streamed, applied onto a root directory, safely."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import uuid
from pathlib import Path

import pytest

from kairos_build.core.errors import HostileContentError, InputError
from kairos_build.source.unpack import apply_layer
from tests.unit.ocihelp import (
    CAP_NET_RAW_EP,
    MTIME,
    Member,
    device,
    dir_,
    fifo,
    hard,
    layer_tar,
    reg,
    sym,
    whiteout,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A sibling of the root: hostile layers must never change anything in it."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_text("host data")
    return tmp_path / "outside"


def apply(root: Path, *members: Member, name: str = "L1") -> None:
    apply_layer(io.BytesIO(layer_tar(*members)), root, name)


def assert_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (outside / "keep").read_text() == "host data"


# --- contents and metadata -----------------------------------------------------------------


def test_regular_files_dirs_and_links(root: Path) -> None:
    apply(
        root,
        dir_("etc"),
        reg("etc/hostname", b"kairos\n"),
        sym("etc/alias", "hostname"),
        hard("etc/twin", "etc/hostname"),
        fifo("run/ctl"),
    )
    assert (root / "etc" / "hostname").read_bytes() == b"kairos\n"
    assert os.readlink(root / "etc" / "alias") == "hostname"
    assert (root / "etc" / "twin").stat().st_ino == (root / "etc" / "hostname").stat().st_ino
    assert stat.S_ISFIFO(os.lstat(root / "run" / "ctl").st_mode)
    assert stat.S_IMODE(os.lstat(root / "run" / "ctl").st_mode) == 0o620


def test_a_dot_slash_prefix_and_the_top_entry_are_accepted(root: Path) -> None:
    apply(root, dir_("./", mode=0o700), dir_("./usr"), reg("./usr/x", b"1"))
    assert (root / "usr" / "x").read_bytes() == b"1"
    assert stat.S_IMODE(root.stat().st_mode) != 0o700  # the rootfs top keeps its own mode


def test_modes_including_setuid_survive_ownership(root: Path) -> None:
    apply(
        root,
        reg("su", b"#!", mode=0o4755, uid=1000, gid=1001),
        reg("wall", b"#!", mode=0o2711, uid=0, gid=5),
        dir_("tmp", mode=0o1777),
        dir_("private", mode=0o700, uid=33, gid=33),
    )
    su = os.stat(root / "su")
    assert (stat.S_IMODE(su.st_mode), su.st_uid, su.st_gid) == (0o4755, 1000, 1001)
    wall = os.stat(root / "wall")
    assert (stat.S_IMODE(wall.st_mode), wall.st_gid) == (0o2711, 5)
    assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777
    private = os.stat(root / "private")
    assert (stat.S_IMODE(private.st_mode), private.st_uid, private.st_gid) == (0o700, 33, 33)


def test_symlink_ownership_and_time_are_its_own(root: Path) -> None:
    apply(root, reg("target", mtime=MTIME), sym("link", "target", uid=7, gid=8, mtime=12345))
    st = os.lstat(root / "link")
    assert (st.st_uid, st.st_gid, int(st.st_mtime)) == (7, 8, 12345)
    assert os.stat(root / "target").st_uid == 0


def test_file_and_directory_mtimes(root: Path) -> None:
    apply(
        root, dir_("a", mtime=1000), dir_("a/b", mtime=2000), reg("a/b/f", mtime=3000), reg("a/g", mtime=4000)
    )
    assert int(os.stat(root / "a" / "b" / "f").st_mtime) == 3000
    assert int(os.stat(root / "a" / "g").st_mtime) == 4000
    # The children were written after their directories: the directory times are still theirs.
    assert int(os.stat(root / "a" / "b").st_mtime) == 2000
    assert int(os.stat(root / "a").st_mtime) == 1000


def test_a_repeated_directory_entry_takes_the_later_time(root: Path) -> None:
    apply(root, dir_("d", mtime=1000), reg("d/f"), dir_("d", mtime=5000, mode=0o750))
    st = os.stat(root / "d")
    assert (int(st.st_mtime), stat.S_IMODE(st.st_mode)) == (5000, 0o750)


def test_security_capability_survives(root: Path) -> None:
    apply(
        root,
        reg(
            "usr/bin/ping",
            b"\x7fELF",
            mode=0o755,
            uid=0,
            gid=0,
            xattrs={"security.capability": CAP_NET_RAW_EP},
        ),
    )
    assert os.getxattr(root / "usr" / "bin" / "ping", "security.capability") == CAP_NET_RAW_EP
    assert stat.S_IMODE(os.stat(root / "usr" / "bin" / "ping").st_mode) == 0o755


def test_security_capability_survives_a_non_root_owner(root: Path) -> None:
    # chown drops file capabilities: the xattr must be set after the ownership, not before.
    apply(root, reg("ping", b"x", uid=1000, gid=1000, xattrs={"security.capability": CAP_NET_RAW_EP}))
    assert os.getxattr(root / "ping", "security.capability") == CAP_NET_RAW_EP


def test_binary_xattr_values_round_trip(root: Path) -> None:
    value = b"\xff\xfe\x00bin\x80"
    apply(root, reg("f", xattrs={"user.blob": value, "trusted.note": b"plain"}))
    assert os.getxattr(root / "f", "user.blob") == value
    assert os.getxattr(root / "f", "trusted.note") == b"plain"


def test_device_nodes_are_skipped(root: Path) -> None:
    apply(root, device("dev/null"), device("dev/sda", tarfile.BLKTYPE), reg("dev/.keep"))
    assert sorted(os.listdir(root / "dev")) == [".keep"]


# --- layering and whiteouts ----------------------------------------------------------------


def test_a_later_layer_overwrites_files_and_keeps_the_rest(root: Path) -> None:
    apply(root, reg("etc/os-release", b"one"), reg("etc/issue", b"lower"), name="L1")
    apply(root, reg("etc/os-release", b"two", mode=0o600), name="L2")
    assert (root / "etc" / "os-release").read_bytes() == b"two"
    assert stat.S_IMODE(os.stat(root / "etc" / "os-release").st_mode) == 0o600
    assert (root / "etc" / "issue").read_bytes() == b"lower"


def test_whiteout_deletes_a_file_and_a_directory(root: Path) -> None:
    apply(root, reg("a/file"), reg("a/dir/deep/x"), reg("a/other"), name="L1")
    apply(root, whiteout("a/.wh.file"), whiteout("a/.wh.dir"), whiteout("a/.wh.missing"), name="L2")
    assert sorted(os.listdir(root / "a")) == ["other"]


def test_whiteout_removes_a_symlink_not_its_target(root: Path, outside: Path) -> None:
    apply(root, sym("lnk", str(outside)), reg("kept/file"), sym("kept-link", "kept"))
    apply(root, whiteout(".wh.lnk"), whiteout(".wh.kept-link"), name="L2")
    assert sorted(os.listdir(root)) == ["kept"]
    assert (root / "kept" / "file").exists()
    assert_untouched(outside)


def test_opaque_whiteout_hides_lower_children_keeps_this_layers(root: Path) -> None:
    apply(root, reg("d/old"), reg("d/sub/oldchild"), reg("keep/x"), name="L1")
    apply(root, dir_("d"), reg("d/before", b"b"), whiteout("d/.wh..wh..opq"), reg("d/after", b"a"), name="L2")
    assert sorted(os.listdir(root / "d")) == ["after", "before"]
    assert (root / "keep" / "x").exists()


def test_opaque_whiteout_reaches_into_directories_this_layer_declared(root: Path) -> None:
    apply(root, reg("d/sub/old"), reg("d/gone"), name="L1")
    apply(root, dir_("d/sub"), reg("d/sub/new"), whiteout("d/.wh..wh..opq"), name="L2")
    assert os.listdir(root / "d") == ["sub"]
    assert os.listdir(root / "d" / "sub") == ["new"]


def test_opaque_whiteout_keeps_parents_this_layer_created_implicitly(root: Path) -> None:
    apply(root, reg("d/sub/old"), name="L1")
    apply(root, reg("d/sub/new", b"n"), whiteout("d/.wh..wh..opq"), name="L2")
    assert os.listdir(root / "d" / "sub") == ["new"]


def test_whiteout_entries_are_not_written(root: Path) -> None:
    apply(root, whiteout(".wh.nothing"), whiteout("x/.wh..wh..opq"), reg("y"))
    assert os.listdir(root) == ["y"]


def test_a_directory_replaced_by_a_symlink(root: Path, outside: Path) -> None:
    apply(root, reg("lib/libc.so", b"elf"), name="L1")
    apply(root, sym("lib", str(outside)), name="L2")
    assert os.readlink(root / "lib") == str(outside)
    assert_untouched(outside)


def test_a_file_replaced_by_a_directory_and_back(root: Path) -> None:
    apply(root, reg("x", b"file"), name="L1")
    apply(root, dir_("x", mode=0o711), reg("x/y", b"in dir"), name="L2")
    assert (root / "x" / "y").read_bytes() == b"in dir"
    assert stat.S_IMODE(os.stat(root / "x").st_mode) == 0o711
    apply(root, reg("x", b"file again"), name="L3")
    assert (root / "x").read_bytes() == b"file again"


def test_a_symlink_to_a_directory_is_replaced_by_a_real_one(root: Path, outside: Path) -> None:
    apply(root, sym("d", str(outside)), name="L1")
    apply(root, dir_("d"), reg("d/f", b"in"), name="L2")
    assert not os.path.islink(root / "d")
    assert (root / "d" / "f").read_bytes() == b"in"
    assert_untouched(outside)


def test_a_file_over_a_symlink_replaces_the_link(root: Path, outside: Path) -> None:
    apply(root, sym("passwd", str(outside / "keep")), name="L1")
    apply(root, reg("passwd", b"root:x:0:0"), name="L2")
    assert not os.path.islink(root / "passwd")
    assert (root / "passwd").read_bytes() == b"root:x:0:0"
    assert_untouched(outside)


# --- hostile layers ------------------------------------------------------------------------


@pytest.mark.parametrize("member", ["../evil", "/abs/evil", "a/../../evil", "./../evil"])
def test_escaping_member_names_are_refused(root: Path, member: str) -> None:
    with pytest.raises(HostileContentError) as err:
        apply(root, reg(member, b"pwned"), name="bad-layer")
    assert "bad-layer" in str(err.value) and repr(member) in str(err.value)
    assert not (root.parent / "evil").exists() and not Path("/abs/evil").exists()


@pytest.mark.parametrize("target", ["/", "../../..", "../../../..//", "/../.."])
def test_a_planted_link_carries_no_write_outside(root: Path, outside: Path, target: str) -> None:
    evil = f"kairos-test-{uuid.uuid4().hex}"
    apply(root, sym("link", target), name="L1")
    apply(root, reg(f"link/etc/{evil}", b"pwned"), reg(f"link/{evil}"), name="L2")
    assert (root / "etc" / evil).read_bytes() == b"pwned"
    assert (root / evil).exists()
    assert not Path("/etc", evil).exists() and not Path("/", evil).exists()
    assert_untouched(outside)


@pytest.mark.parametrize("prefix", ["", "/"])
def test_a_link_to_an_absolute_host_path_is_rerooted(root: Path, outside: Path, prefix: str) -> None:
    # `//path` is absolute too, even though pathlib keeps the double slash as its root.
    apply(
        root,
        sym("out", prefix + str(outside)),
        reg("out/evil", b"pwned"),
        dir_("out/dir"),
        sym("out/l", "/"),
        name="L1",
    )
    rerooted = root / str(outside).lstrip("/")
    assert (rerooted / "evil").read_bytes() == b"pwned"
    assert (rerooted / "dir").is_dir()
    assert_untouched(outside)


def test_a_link_earlier_in_the_same_layer_is_rerooted(root: Path, outside: Path) -> None:
    apply(root, sym("up", "../.."), sym("up/x", str(outside)), reg("up/x/evil", b"pwned"))
    assert (root / str(outside).lstrip("/") / "evil").read_bytes() == b"pwned"
    assert_untouched(outside)


def test_a_whiteout_through_a_planted_link_stays_inside(root: Path, outside: Path) -> None:
    apply(root, sym("link", str(outside)), name="L1")
    apply(root, whiteout("link/.wh.keep"), whiteout("link/.wh..wh..opq"), name="L2")
    assert_untouched(outside)


@pytest.mark.parametrize("member", [".wh..", ".wh...", "sub/.wh...", "sub/.wh."])
def test_a_whiteout_of_dot_or_dotdot_is_refused(root: Path, outside: Path, member: str) -> None:
    apply(root, reg("sub/file"), name="L1")
    with pytest.raises(HostileContentError) as err:
        apply(root, whiteout(member), name="L2")
    assert "L2" in str(err.value) and member in str(err.value)
    assert (root / "sub" / "file").exists()
    assert_untouched(outside)


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd", "a/../../../etc/passwd"])
def test_a_hardlink_out_of_the_root_is_refused(root: Path, target: str) -> None:
    with pytest.raises(HostileContentError) as err:
        apply(root, hard("stolen", target), name="L9")
    assert "L9" in str(err.value) and "'stolen'" in str(err.value)
    assert not (root / "stolen").exists()


def test_a_hardlink_through_a_planted_link_stays_inside(root: Path) -> None:
    apply(root, reg("etc/passwd", b"inside"), sym("hostetc", "/etc"), hard("stolen", "hostetc/passwd"))
    assert os.stat(root / "stolen").st_ino == os.stat(root / "etc" / "passwd").st_ino
    assert os.stat(root / "stolen").st_ino != os.stat("/etc/passwd").st_ino


def test_a_hardlink_to_a_symlink_is_refused(root: Path, outside: Path) -> None:
    apply(root, sym("escape", str(outside / "keep")), name="L1")
    with pytest.raises(HostileContentError) as err:
        apply(root, hard("stolen", "escape"), name="L2")
    assert "'stolen'" in str(err.value) and "non-file" in str(err.value)
    assert not os.path.lexists(root / "stolen")
    assert os.stat(outside / "keep").st_nlink == 1


def test_a_hardlink_to_a_missing_file_or_a_directory_is_refused(root: Path) -> None:
    with pytest.raises(HostileContentError, match="missing"):
        apply(root, hard("h", "nothere"))
    with pytest.raises(HostileContentError, match="non-file"):
        apply(root, dir_("d"), hard("h", "d"))


def test_a_symlink_loop_in_a_parent_is_refused_with_names(root: Path) -> None:
    with pytest.raises(HostileContentError) as err:
        apply(root, sym("a", "b"), sym("b", "a"), reg("a/x"), name="loop-layer")
    assert "loop-layer" in str(err.value) and "'a/x'" in str(err.value)


def test_a_file_used_as_a_parent_is_refused(root: Path) -> None:
    with pytest.raises(HostileContentError) as err:
        apply(root, reg("f"), reg("f/x"), name="L5")
    assert "L5" in str(err.value) and "'f/x'" in str(err.value)


# --- broken input --------------------------------------------------------------------------


def test_a_truncated_layer_is_an_input_error(root: Path) -> None:
    data = layer_tar(reg("big", b"x" * 10_000), reg("after", b"y"))
    with pytest.raises(InputError) as err:
        apply_layer(io.BytesIO(data[:3000]), root, "L7")
    assert "layer L7" in str(err.value)
    assert not (root / "after").exists()


@pytest.mark.parametrize("data", [b"this is not a tar archive" * 40, b"", bytes(range(256)) * 4])
def test_garbage_is_an_input_error(root: Path, data: bytes) -> None:
    with pytest.raises(InputError) as err:
        apply_layer(io.BytesIO(data), root, "junk")
    assert str(err.value).startswith("layer junk is not a valid tar archive")
    assert os.listdir(root) == []


def test_an_owner_beyond_32_bits_is_refused_not_a_crash(tmp_path: Path) -> None:
    info = tarfile.TarInfo("f")
    info.uid = 1 << 40
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    buf.seek(0)
    with pytest.raises(HostileContentError, match="impossible owner"):
        apply_layer(buf, tmp_path, "big-uid")
