"""Ctrl-C in the middle of a conversion, and the OCI source against the tree it came from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from kairos_build.core.cache import Cache
from kairos_build.core.flavors import load_flavor
from kairos_build.source.resolve import resolve_base
from tests.conftest import read_until
from tests.imagefiles import write_oci_layout

pytestmark = pytest.mark.integration


def test_ctrl_c_during_conversion_leaves_no_mount_no_partial_entry_no_artifact(
    trixie_base: Path, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kairos_build",
            "iso",
            "--base",
            f"dir:{trixie_base}",
            "--output",
            str(out),
            "--cache-dir",
            str(cache),
        ],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As from a terminal: Ctrl-C acts. A runner that started us in the background of a
        # non-interactive shell (`cmd &`) passes SIGINT down ignored, and then it would not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = read_until(proc, "installing")
    assert "installing" in seen, seen
    time.sleep(3)  # let apt run inside the namespace with its mounts in place
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    assert proc.stderr is not None
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, seen + rest
    assert "interrupted" in rest
    assert str(cache) not in Path("/proc/self/mountinfo").read_text()
    assert not list((cache / "converted").glob("*")), list((cache / "converted").iterdir())
    assert not out.exists() or not any(out.iterdir())


def test_oci_layout_base_unpacks_to_the_same_tree(trixie_base: Path, tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(trixie_base, arcname=".")
    layout = tmp_path / "layout"
    layout.mkdir()
    write_oci_layout(layout, layer, "trixie")
    flavor = load_flavor("debian")
    base = resolve_base(f"oci:{layout}:trixie", flavor, flavor.release(None), Cache(tmp_path / "cache"))

    def tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
        found = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                st = path.lstat()
                detail = os.readlink(path) if path.is_symlink() else str(st.st_size) if path.is_file() else ""
                found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, detail)
        return found

    original, unpacked = tree(trixie_base), tree(base.rootfs)
    # Device nodes are deliberately not unpacked from images; everything else must match.
    devices = {p for p, (mode, *_rest) in original.items() if (mode & 0o170000) in (0o020000, 0o060000)}
    assert {p: v for p, v in original.items() if p not in devices} == unpacked
    sample = "usr/bin/apt"
    assert (trixie_base / sample).read_bytes() == (base.rootfs / sample).read_bytes()
