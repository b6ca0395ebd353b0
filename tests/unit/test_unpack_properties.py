"""Property: whatever layers we are fed, `apply_layer` writes nowhere but inside the rootfs.

Hypothesis builds 1-3 layers of members with hostile-ish names (`..`, `.`, empty and doubled
slashes, absolute paths, whiteouts) and hostile-ish link targets (absolute, `../../..`, the
host path of a sibling directory), applies them in order onto `tmp/root`, and checks that the
rest of a fresh temp dir, including a canary file in the sibling `tmp/outside`, is untouched:
no entry created, deleted or changed (type, mode, owner, size, link count, times, content). The
only exception allowed out is InputError (HostileContentError is one): a refused image.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from kairos_build.core.errors import InputError
from kairos_build.source.unpack import apply_layer
from tests.unit.ocihelp import dir_, hard, layer_tar, reg, sym

# Path components. "" at the start makes an absolute name, "" or "/" inside doubles a slash.
COMPONENTS = [
    "..",
    ".",
    "",
    "/",
    "a",
    "b",
    "etc",
    ".wh.x",
    ".wh.a",
    ".wh..",
    ".wh...",
    ".wh..wh..opq",
    "link",
    "outside",
    "tmp",
]
# Stands for the host path of `tmp/outside` in link targets: what a tool that follows links on
# the host would be led to.
HOST_OUTSIDE = "@HOST_OUTSIDE@"

# Mostly components a layer may use, so that many layers apply and later ones build on them;
# any component a third of the time, so that refusals (and near misses) are explored too.
SAFE = ["a", "b", "etc", "link", "outside", "tmp", ".wh.x", ".wh.a", ".wh..wh..opq", "."]
component = st.one_of(st.sampled_from(SAFE), st.sampled_from(SAFE), st.sampled_from(COMPONENTS))
names = st.lists(component, min_size=1, max_size=4).map("/".join)
targets = st.one_of(
    names,
    names.map(lambda name: "/" + name),
    st.sampled_from(
        [
            "../../..",
            "../../../outside",
            "../outside",
            "/",
            "/..",
            "/tmp/outside",
            HOST_OUTSIDE,
            HOST_OUTSIDE + "/canary",
            "",
        ]
    ),
)
members = st.one_of(
    st.tuples(st.just("file"), names, st.binary(max_size=8)),
    st.tuples(st.just("dir"), names, st.just(b"")),
    st.tuples(st.just("symlink"), names, targets),
    st.tuples(st.just("hardlink"), names, targets),
)
layers = st.lists(st.lists(members, min_size=1, max_size=8), min_size=1, max_size=3)

Snapshot = dict[str, tuple[object, ...]]


def _snapshot(top: Path, skip: Path) -> Snapshot:
    """Every entry under `top` (and `top`) but `skip` and what it holds: metadata and content."""
    found: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        paths = [Path(dirpath, name) for name in dirnames + filenames]
        for path in [top] + paths if dirpath == str(top) else paths:
            if path == skip:  # its own times change with what is written inside it
                continue
            st_ = os.lstat(path)
            detail: object = None
            if stat.S_ISLNK(st_.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISREG(st_.st_mode):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
            # Not atime: reading for the snapshot changes it. ctime catches chmod, chown, link.
            found[str(path.relative_to(top))] = (
                st_.st_mode,
                st_.st_uid,
                st_.st_gid,
                st_.st_size,
                st_.st_nlink,
                st_.st_mtime_ns,
                st_.st_ctime_ns,
                st_.st_ino,
                detail,
            )
    # The rootfs must still be a real directory: not swapped for a link to elsewhere.
    assert stat.S_ISDIR(os.lstat(skip).st_mode)
    return found


def _member(kind: str, name: str, arg: object, outside: Path) -> tuple[tarfile.TarInfo, bytes | None]:
    if kind == "file":
        assert isinstance(arg, bytes)
        return reg(name, arg, mode=0o4755)
    if kind == "dir":
        return dir_(name, mode=0o777)
    assert isinstance(arg, str)
    target = arg.replace(HOST_OUTSIDE, str(outside))
    return sym(name, target) if kind == "symlink" else hard(name, target)


@settings(max_examples=2000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers)
# What this test found: a directory's time was set last through its host path, by then leading
# through a symlink out of the rootfs; a later file replacing its parent made that time fail
# with NotADirectoryError; an empty symlink target let FileNotFoundError out.
@example([[("dir", "a/etc", b""), ("symlink", "a", HOST_OUTSIDE)]])
@example([[("dir", "a/a", b""), ("file", "a", b"")]])
@example([[("symlink", "a", "")]])
def test_layers_never_touch_anything_outside_the_rootfs(
    generated: list[list[tuple[str, str, object]]],
) -> None:
    # A fresh directory per example (function-scoped fixtures are shared across examples),
    # nested so that even `../../../..` from the rootfs still lands inside what we watch.
    base = Path(tempfile.mkdtemp(prefix="unpack-prop-"))
    try:
        top = base / "w" / "x"
        root, outside = top / "tmp" / "root", top / "tmp" / "outside"
        root.mkdir(parents=True)
        outside.mkdir()
        (outside / "canary").write_bytes(b"canary: must stay as it is\n")
        (outside / "etc").mkdir()
        (outside / "etc" / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
        os.symlink("canary", outside / "link")
        (base / "canary").write_bytes(b"top canary\n")
        before = _snapshot(base, root)
        for number, members_ in enumerate(generated, 1):
            tar = layer_tar(*(_member(kind, name, arg, outside) for kind, name, arg in members_))
            try:
                apply_layer(io.BytesIO(tar), root, f"{number}/{len(generated)}")
            except InputError as exc:
                event(f"refused: {type(exc).__name__}")
                break  # the image is refused: nothing more is applied
        else:
            event("applied")
        assert _snapshot(base, root) == before
        assert (outside / "canary").read_bytes() == b"canary: must stay as it is\n"
    finally:
        shutil.rmtree(base)
