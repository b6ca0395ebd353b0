"""rootfs: paths inside an image's root resolve as if it were `/`, never outside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kairos_build.core import rootfs
from kairos_build.core.errors import HostileContentError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "etc").mkdir(parents=True)
    (tmp_path / "root" / "usr" / "lib").mkdir(parents=True)
    return tmp_path / "root"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_text("host data")
    return tmp_path / "outside"


def assert_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (outside / "keep").read_text() == "host data"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("etc/hostname", "etc/hostname"),
        ("/etc/hostname", "etc/hostname"),
        ("./etc//hostname", "etc/hostname"),
        ("../../etc/hostname", "etc/hostname"),
        ("usr/lib/../../../../etc", "etc"),
        ("/", ""),
        ("..", ""),
    ],
)
def test_plain_paths_and_dotdot_clamped_at_the_top(root: Path, path: str, expected: str) -> None:
    assert rootfs.resolve_in(root, path) == root.joinpath(*expected.split("/") if expected else [])


@pytest.mark.parametrize(
    "target", ["/usr/lib", "../usr/lib", "../../../../usr/lib", "//usr/lib", "/../../usr/./lib/"]
)
def test_links_resolve_inside(root: Path, target: str) -> None:
    os.symlink(target, root / "lib")
    assert rootfs.resolve_in(root, "lib/modules") == root / "usr" / "lib" / "modules"
    assert rootfs.resolve_in(root, "/lib") == root / "usr" / "lib"


def test_an_absolute_host_path_in_a_link_is_rerooted(root: Path, outside: Path) -> None:
    os.symlink(str(outside), root / "out")
    os.symlink("/" + str(outside), root / "out2")  # "//tmp/...": still absolute, still rerooted
    assert rootfs.resolve_in(root, "out/keep") == root / str(outside).lstrip("/") / "keep"
    assert rootfs.resolve_in(root, "out2/keep") == root / str(outside).lstrip("/") / "keep"


def test_dotdot_after_a_link_is_taken_from_the_link_target(root: Path) -> None:
    (root / "usr" / "lib" / "x").mkdir()
    os.symlink("usr/lib/x", root / "lx")
    assert rootfs.resolve_in(root, "lx/../y") == root / "usr" / "lib" / "y"


def test_chained_links(root: Path) -> None:
    os.symlink("b", root / "a")
    os.symlink("/c", root / "b")
    os.symlink("etc", root / "c")
    assert rootfs.resolve_in(root, "a/passwd") == root / "etc" / "passwd"


def test_follow_last_false_leaves_the_final_link(root: Path) -> None:
    os.symlink("/etc", root / "link")
    os.symlink("/usr", root / "etc" / "last")
    assert rootfs.resolve_in(root, "link/last", follow_last=False) == root / "etc" / "last"
    assert rootfs.resolve_in(root, "link/last") == root / "usr"


def test_mkdirs_creates_intermediate_directories_only(root: Path) -> None:
    path = rootfs.resolve_in(root, "a/b/c", mkdirs=True)
    assert path == root / "a" / "b" / "c"
    assert (root / "a" / "b").is_dir() and not path.exists()
    assert oct((root / "a").stat().st_mode & 0o777) == oct(0o755)


def test_mkdirs_through_a_dangling_link_stays_inside(root: Path, outside: Path) -> None:
    os.symlink(str(outside / "new"), root / "dangling")
    path = rootfs.resolve_in(root, "dangling/sub/file", mkdirs=True)
    rerooted = root / str(outside).lstrip("/") / "new"
    assert path == rerooted / "sub" / "file" and (rerooted / "sub").is_dir()
    assert_untouched(outside)


def test_without_mkdirs_missing_parents_are_not_created(root: Path) -> None:
    assert rootfs.resolve_in(root, "no/such/file") == root / "no" / "such" / "file"
    assert not (root / "no").exists()


def test_a_symlink_loop_is_refused(root: Path) -> None:
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(HostileContentError, match="too many levels of symlinks"):
        rootfs.resolve_in(root, "a/x")
    os.symlink("self", root / "self")
    with pytest.raises(HostileContentError):
        rootfs.resolve_in(root, "self")


def test_a_long_but_finite_chain_is_followed(root: Path) -> None:
    for n in range(30):
        os.symlink(f"l{n + 1}", root / f"l{n}")
    os.symlink("etc", root / "l30")
    assert rootfs.resolve_in(root, "l0/x") == root / "etc" / "x"


def test_a_file_used_as_a_directory_is_refused(root: Path) -> None:
    (root / "etc" / "passwd").write_text("")
    with pytest.raises(HostileContentError, match="not a directory"):
        rootfs.resolve_in(root, "etc/passwd/x")


# --- write_text, read_text, symlink, remove ------------------------------------------------


def test_write_text_creates_parents_and_sets_the_mode(root: Path) -> None:
    path = rootfs.write_text(root, "/etc/kairos/conf.yaml", "a: 1\n", mode=0o600)
    assert path == root / "etc" / "kairos" / "conf.yaml"
    assert path.read_text() == "a: 1\n"
    assert path.stat().st_mode & 0o7777 == 0o600
    assert rootfs.read_text(root, "etc/kairos/conf.yaml") == "a: 1\n"


def test_write_text_mode_is_not_masked_by_the_umask(root: Path) -> None:
    old = os.umask(0o077)
    try:
        path = rootfs.write_text(root, "etc/motd", "hi", mode=0o644)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_text_replaces_a_file(root: Path) -> None:
    (root / "etc" / "hostname").write_text("old")
    rootfs.write_text(root, "etc/hostname", "new")
    assert (root / "etc" / "hostname").read_text() == "new"


def test_write_text_replaces_a_link_instead_of_following_it(root: Path, outside: Path) -> None:
    os.symlink(str(outside / "keep"), root / "etc" / "resolv.conf")
    os.symlink("../../../../outside/keep", root / "etc" / "hosts")
    rootfs.write_text(root, "etc/resolv.conf", "nameserver 1.1.1.1\n")
    rootfs.write_text(root, "etc/hosts", "127.0.0.1 localhost\n")
    assert not (root / "etc" / "resolv.conf").is_symlink()
    assert (root / "etc" / "resolv.conf").read_text() == "nameserver 1.1.1.1\n"
    assert (root / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert_untouched(outside)


def test_write_text_through_a_linked_parent_stays_inside(root: Path, outside: Path) -> None:
    os.symlink(str(outside), root / "etc" / "ssh")
    path = rootfs.write_text(root, "etc/ssh/sshd_config", "PermitRootLogin no\n")
    assert path == root / str(outside).lstrip("/") / "sshd_config"
    assert path.read_text() == "PermitRootLogin no\n"
    assert_untouched(outside)


def test_write_text_over_a_directory_is_refused(root: Path) -> None:
    with pytest.raises(HostileContentError, match="found a directory"):
        rootfs.write_text(root, "usr/lib", "x")
    assert (root / "usr" / "lib").is_dir()


def test_read_text_of_missing_or_non_files_is_none(root: Path, outside: Path) -> None:
    os.symlink(str(outside / "keep"), root / "etc" / "leak")
    assert rootfs.read_text(root, "etc/leak") is None  # the link resolves inside: nothing there
    assert rootfs.read_text(root, "etc") is None
    assert rootfs.read_text(root, "etc/missing") is None
    (root / "etc" / "bad").write_bytes(b"\xffok")
    assert rootfs.read_text(root, "etc/bad") == "\ufffdok"


def test_symlink_creates_and_replaces_links(root: Path, outside: Path) -> None:
    rootfs.symlink(root, "etc/localtime", "/usr/share/zoneinfo/UTC")
    assert os.readlink(root / "etc" / "localtime") == "/usr/share/zoneinfo/UTC"
    rootfs.symlink(root, "etc/localtime", "/usr/share/zoneinfo/Europe/Berlin")
    assert os.readlink(root / "etc" / "localtime") == "/usr/share/zoneinfo/Europe/Berlin"
    (root / "etc" / "mtab").write_text("file")
    rootfs.symlink(root, "/etc/mtab", "../proc/self/mounts")
    assert os.readlink(root / "etc" / "mtab") == "../proc/self/mounts"
    os.symlink(str(outside), root / "var")
    rootfs.symlink(root, "var/run", "/run")
    assert os.readlink(root / str(outside).lstrip("/") / "run") == "/run"
    assert_untouched(outside)


def test_remove_files_and_links_but_not_directories(root: Path, outside: Path) -> None:
    (root / "etc" / "machine-id").write_text("abc")
    os.symlink(str(outside / "keep"), root / "etc" / "link")
    assert rootfs.remove(root, "etc/machine-id") is True
    assert rootfs.remove(root, "etc/machine-id") is False
    assert rootfs.remove(root, "etc/link") is True
    assert not os.path.lexists(root / "etc" / "link")
    with pytest.raises(HostileContentError, match="found a directory"):
        rootfs.remove(root, "usr/lib")
    assert (root / "usr" / "lib").is_dir()
    assert_untouched(outside)


def test_remove_through_a_linked_parent_stays_inside(root: Path, outside: Path) -> None:
    os.symlink(str(outside), root / "out")
    assert rootfs.remove(root, "out/keep") is False
    assert_untouched(outside)
