"""Our OCI unpacker against umoci's, as an oracle: the same image must give the same tree.

Two images: a small hand-made one exercising what layers can do (modes, owners, links,
xattrs, whiteouts, opaque directories, replacing one type by another), and a real Debian rootfs
as layer 1 with a second layer on top. Both are unpacked by `umoci unpack` (Debian's umoci,
run as root) and by `kairos_build.source.oci.unpack_image`, and the trees are compared: paths,
types, permission bits, owners, symlink targets, file contents, hardlink groups, xattrs, and
mtimes. umoci sets the mtimes of files, symlinks and directories exactly as the layer states
them (to the nanosecond of a PAX header); so do we since reading them as tarfile's float (up to
~100 ns off for files) and int() (a directory's fraction dropped) was fixed in unpack.py.

Not compared, and why:
- device nodes: our unpacker skips character and block devices on purpose (a rootfs needs none,
  /dev is mounted at boot), umoci creates them;
- the rootfs top itself: umoci makes BUNDLE/rootfs with its own mode and time, we fill a
  directory we are given;
- the mtime of a directory that a later layer adds children to or removes children from
  without declaring it again: the kernel sets it to "now" in both, at different moments (see
  `_stable_dirs`); every other directory's mtime is compared.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import pytest

from kairos_build.source.oci import unpack_image
from tests.unit.ocihelp import (
    CAP_NET_RAW_EP,
    Layout,
    device,
    dir_,
    fifo,
    hard,
    layer_tar,
    reg,
    sym,
    whiteout,
)

pytestmark = pytest.mark.integration

TAG = "oracle"
# umoci records rootless-mode owners in this xattr; it is umoci's bookkeeping, not image content.
UMOCI_XATTRS = ("user.rootlesscontainers",)


@pytest.fixture(scope="module", autouse=True)
def _umoci_as_root() -> None:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed (apt-get install umoci)")
    if os.geteuid() != 0:
        pytest.skip("the oracle compares owners and device handling: it runs as root")


# --- Trees as the comparison sees them -------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    kind: str
    perms: int
    uid: int
    gid: int
    link: str | None
    sha256: str | None
    xattrs: tuple[tuple[str, bytes], ...]
    mtime_ns: int | None  # files and symlinks; a directory's is in Tree.dir_mtimes


_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    names = os.listxattr(path, follow_symlinks=False)
    return tuple(
        sorted(
            (name, os.getxattr(path, name, follow_symlinks=False))
            for name in names
            if not name.startswith(UMOCI_XATTRS)
        )
    )


@dataclass
class Tree:
    entries: dict[str, Entry]
    hardlinks: set[frozenset[str]]  # groups of paths sharing one inode
    dir_mtimes: dict[str, int]
    devices: set[str]


def scan(root: Path) -> Tree:
    entries: dict[str, Entry] = {}
    inodes: dict[int, set[str]] = {}
    dir_mtimes: dict[str, int] = {}
    devices: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            fmt = stat.S_IFMT(st.st_mode)
            if fmt in (stat.S_IFCHR, stat.S_IFBLK):
                devices.add(rel)
                continue
            kind = _KINDS[fmt]
            if kind == "dir":
                dir_mtimes[rel] = st.st_mtime_ns
            if kind == "file" and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, set()).add(rel)
            entries[rel] = Entry(
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                os.readlink(path) if kind == "symlink" else None,
                _sha256(path) if kind == "file" else None,
                _xattrs(path),
                st.st_mtime_ns if kind in ("file", "symlink") else None,
            )
    return Tree(entries, {frozenset(g) for g in inodes.values() if len(g) > 1}, dir_mtimes, devices)


def assert_same_tree(ours: Tree, theirs: Tree, stable_dirs: set[str]) -> None:
    """Everything umoci unpacked, devices aside, and nothing else, with the same metadata."""
    assert not ours.devices, f"we unpacked device nodes: {sorted(ours.devices)[:5]}"
    missing = sorted(set(theirs.entries) - set(ours.entries))
    extra = sorted(set(ours.entries) - set(theirs.entries))
    assert not missing and not extra, f"only umoci has {missing[:20]}; only we have {extra[:20]}"
    differing = {
        path: (ours.entries[path], theirs.entries[path])
        for path in theirs.entries
        if ours.entries[path] != theirs.entries[path]
    }
    assert not differing, "ours vs umoci's:\n" + "\n".join(
        f"{path}:\n  {a}\n  {b}" for path, (a, b) in sorted(differing.items())[:20]
    )
    assert ours.hardlinks == theirs.hardlinks
    dir_times = {
        path: (ours.dir_mtimes[path], theirs.dir_mtimes[path])
        for path in stable_dirs
        if ours.dir_mtimes.get(path) != theirs.dir_mtimes.get(path)
    }
    assert not dir_times, f"directory mtimes (ours, umoci's) differ: {dir_times}"


def _stable_dirs(tree: Tree, touched: set[str]) -> set[str]:
    """Directories whose mtime comes from the image: all but those (`touched`) a later layer
    added children to or removed children from without declaring the directory again."""
    return set(tree.dir_mtimes) - touched


def unpack_both(layout: Path, tmp: Path) -> tuple[Tree, Tree]:
    bundle = tmp / "umoci-bundle"
    result = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ours = tmp / "ours"
    ours.mkdir()
    unpack_image(layout, TAG, ours)
    return scan(ours), scan(bundle / "rootfs")


# --- The small image: every kind of entry and change ----------------------------------------


def test_small_image_unpacks_like_umoci(tmp_path: Path) -> None:
    layer1 = layer_tar(
        dir_("etc"),
        reg("etc/hostname", b"oracle\n"),
        reg("etc/remove-me", b"whited out by layer 2\n"),
        dir_("etc/removedir"),
        reg("etc/removedir/child", b"goes with its directory\n"),
        sym("etc/localtime", "/usr/share/zoneinfo/Etc/UTC"),  # absolute, dangling
        dir_("home"),
        dir_("home/user", mode=0o750, uid=1000, gid=1000),
        reg("home/user/.profile", b"PATH=/bin\n", mode=0o600, uid=1000, gid=1000),
        sym("home/user/bin", "../../usr/bin", uid=1000, gid=1000),  # relative, through ..
        dir_("tmp", mode=0o1777),
        dir_("usr"),
        dir_("usr/bin"),
        reg("usr/bin/dash", b"\x7fELF dash\n", mode=0o755),
        hard("usr/bin/sh.hard", "usr/bin/dash"),
        sym("usr/bin/sh", "dash"),  # relative, same directory
        reg("usr/bin/su", b"\x7fELF su\n", mode=0o4755),
        reg("usr/bin/wall", b"\x7fELF wall\n", mode=0o2755, gid=5),
        reg(
            "usr/bin/ping",
            b"\x7fELF ping\n",
            mode=0o755,
            xattrs={"security.capability": CAP_NET_RAW_EP, "user.test": b"value\x00\xff"},
        ),
        dir_("usr/lib"),
        sym("usr/lib/bin", "../bin"),
        dir_("empty", mode=0o700),
        dir_("var"),
        dir_("var/lib"),
        dir_("var/lib/old"),
        reg("var/lib/old/state", b"replaced with its directory\n"),
        dir_("var/cache"),
        dir_("var/cache/opq", mode=0o755),
        reg("var/cache/opq/a", b"lower a\n"),
        reg("var/cache/opq/b", b"lower b\n"),
        dir_("var/cache/opq/sub"),
        reg("var/cache/opq/sub/c", b"lower c\n"),
        dir_("srv"),
        reg("srv/data", b"a file, a directory in layer 2\n", mode=0o640, uid=1000),
        dir_("opt"),
        dir_("opt/app"),
        reg("opt/app/run", b"#!/bin/sh\n", mode=0o755),
        dir_("run"),
        fifo("run/initctl", mode=0o600),
        dir_("dev"),
        device("dev/null"),
        device("dev/loop0", tarfile.BLKTYPE),
    )
    layer2 = layer_tar(
        whiteout("etc/.wh.remove-me"),
        whiteout("etc/.wh.removedir"),
        reg("etc/new", b"added by layer 2\n", mode=0o600),
        reg("var/lib/old", b"a directory replaced by a file\n"),  # dir -> file
        dir_("srv/data", mode=0o711, uid=1000, gid=1000),  # file -> dir
        reg("srv/data/inner", b"inside the new directory\n"),
        sym("opt/app", "/usr/lib"),  # dir -> symlink
        hard("usr/bin/dash.hard2", "usr/bin/dash"),  # a hardlink to a lower layer's file
        dir_("home/user", mode=0o700, uid=1000, gid=1000),  # re-declared: children stay
    )
    layer3 = layer_tar(
        dir_("var/cache/opq", mode=0o750),
        reg("var/cache/opq/before", b"written before the opaque marker: kept\n"),
        whiteout("var/cache/opq/.wh..wh..opq"),
        reg("var/cache/opq/new", b"added by layer 3\n"),
        dir_("var/cache/opq/sub"),
        reg("var/cache/opq/sub/d", b"new d\n"),
    )
    layout = Layout()
    layout.add(layout.image(layer1, layer2, layer3), tag=TAG)
    (tmp_path / "layout").mkdir()
    layout.write_dir(tmp_path / "layout")

    ours, theirs = unpack_both(tmp_path / "layout", tmp_path)

    # The oracle means something only if it unpacked what we think it did.
    assert theirs.devices == {"dev/null", "dev/loop0"}
    assert dict(theirs.entries["usr/bin/ping"].xattrs) == {
        "security.capability": CAP_NET_RAW_EP,
        "user.test": b"value\x00\xff",
    }
    assert theirs.entries["usr/bin/su"].perms == 0o4755
    assert theirs.entries["var/lib/old"].kind == "file"
    assert theirs.entries["srv/data"].kind == "dir"
    assert theirs.entries["opt/app"].kind == "symlink"
    assert "etc/remove-me" not in theirs.entries and "etc/removedir" not in theirs.entries
    assert {p for p in theirs.entries if p.startswith("var/cache/opq/")} == {
        "var/cache/opq/before",
        "var/cache/opq/new",
        "var/cache/opq/sub",
        "var/cache/opq/sub/d",
    }
    assert frozenset({"usr/bin/dash", "usr/bin/sh.hard", "usr/bin/dash.hard2"}) in theirs.hardlinks

    # Layer 2 adds or removes children of these without declaring them again. (Layer 3 does
    # declare var/cache/opq: its time comes from the layer, in both.)
    touched = {"etc", "var/lib", "srv", "opt", "usr/bin"}
    assert_same_tree(ours, theirs, _stable_dirs(theirs, touched))


# --- A real Debian rootfs as layer 1 ---------------------------------------------------------


@pytest.fixture(scope="session")
def debian_rootfs(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bootstrapped Debian tree the other tests left in the cache, or a fresh minbase one."""
    for candidate in sorted((test_cache / "rootfs").glob("*")):
        if not candidate.name.startswith(".") and (candidate / "etc/os-release").is_file():
            return candidate
    if shutil.which("mmdebstrap") is None:
        pytest.skip("no cached Debian rootfs and no mmdebstrap to make one")
    target = tmp_path_factory.mktemp("rootfs") / "trixie"
    result = subprocess.run(
        ["mmdebstrap", "--variant=minbase", "trixie", str(target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return target


class _Hashing:
    """A write-only stream that hashes what passes through on its way to `out`."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _add_blob(layout: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _add_layer(layout: Path, fill: Any) -> tuple[dict[str, Any], str]:
    """A gzip layer streamed to its blob: `fill(tar)` adds the members. Descriptor, diff_id."""
    partial = layout / "blobs/sha256/partial"
    with partial.open("wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(fileobj=cast(IO[bytes], compressed), mode="wb", compresslevel=1, mtime=0) as gz:
            uncompressed = _Hashing(cast(IO[bytes], gz))
            with tarfile.open(
                fileobj=cast(IO[bytes], uncompressed), mode="w|", format=tarfile.PAX_FORMAT
            ) as tar:
                fill(tar)
    digest = compressed.hash.hexdigest()
    partial.rename(layout / "blobs/sha256" / digest)
    return (
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": f"sha256:{digest}",
            "size": compressed.size,
        },
        f"sha256:{uncompressed.hash.hexdigest()}",
    )


def write_layout(layout: Path, fills: list[Any]) -> None:
    """An OCI layout of one image tagged TAG, its layers streamed from disk, never in memory."""
    (layout / "blobs/sha256").mkdir(parents=True)
    layers, diff_ids = zip(*(_add_layer(layout, fill) for fill in fills), strict=True)
    config = _add_blob(
        layout,
        json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}}
        ).encode(),
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = _add_blob(
        layout,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config,
                "layers": list(layers),
            }
        ).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [{**manifest, "annotations": {"org.opencontainers.image.ref.name": TAG}}],
            }
        )
    )


def _add_members(tar: tarfile.TarFile, members: bytes) -> None:
    with tarfile.open(fileobj=io.BytesIO(members)) as source:
        for member in source:
            tar.addfile(member, source.extractfile(member) if member.isreg() else None)


def test_real_debian_image_unpacks_like_umoci(debian_rootfs: Path, tmp_path: Path) -> None:
    """Layer 1 a whole Debian tree (Python's tarfile records no xattrs: the small image has
    them), layer 2 deletes /usr/share/doc, makes /opt a symlink and adds a file."""
    top = layer_tar(
        whiteout("usr/share/.wh.doc"),
        sym("opt", "/usr/local"),  # a directory replaced by a symlink
        reg("etc/kairos-oracle", b"added by layer 2\n", mode=0o600),
    )
    layout = tmp_path / "layout"
    write_layout(
        layout, [lambda tar: tar.add(debian_rootfs, arcname="."), lambda tar: _add_members(tar, top)]
    )

    ours, theirs = unpack_both(layout, tmp_path)

    assert "usr/bin/apt" in theirs.entries and "usr/share/doc" not in theirs.entries
    assert theirs.entries["opt"].kind == "symlink"
    assert_same_tree(ours, theirs, _stable_dirs(theirs, {"etc", "usr/share"}))
