from __future__ import annotations

import re
from pathlib import Path

import pytest

from kairos_build.boot.harness import _PROBE_SECTOR, MARKER, artifact_drive, check_root
from kairos_build.core.cache import Cache, cache_key, hash_tree
from kairos_build.core.errors import InputError, MissingToolError
from kairos_build.core.tools import APT_HOST_PACKAGES, require_tool, run


def test_cache_entry_appears_only_when_complete(tmp_path: Path) -> None:
    cache = Cache(tmp_path)

    def fail(target: Path) -> None:
        (target / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_make("rootfs", "k1", fail)
    assert not cache.path("rootfs", "k1").exists()
    assert [p.name for p in (tmp_path / "rootfs").iterdir()] == []

    calls = []

    def make(target: Path) -> None:
        calls.append(1)
        (target / "done").write_text("y")

    first = cache.get_or_make("rootfs", "k1", make)
    second = cache.get_or_make("rootfs", "k1", make)
    assert first == second and (first / "done").read_text() == "y" and len(calls) == 1
    cache.get_or_make("rootfs", "k1", make, refresh=True)
    assert len(calls) == 2


def test_prune_partial_removes_leftovers_of_dead_processes(tmp_path: Path) -> None:
    leftover = tmp_path / "rootfs" / ".tmp-abc-999999999"
    leftover.mkdir(parents=True)
    Cache(tmp_path).prune_partial()
    assert not leftover.exists()


def test_cache_keys_and_tree_hash_change_with_content(tmp_path: Path) -> None:
    assert cache_key("a", x=1) == cache_key("a", x=1) != cache_key("a", x=2)
    (tmp_path / "f").write_text("one")
    before = hash_tree(tmp_path)
    (tmp_path / "f").write_text("two")
    assert hash_tree(tmp_path) != before


def test_missing_tool_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingToolError) as err:
        require_tool("no-such-tool-kairos")
    assert err.value.exit_code == 4
    monkeypatch.setenv("PATH", "/nonexistent")  # mksquashfs lives in /usr/bin
    with pytest.raises(MissingToolError, match=r"'mksquashfs' \(package squashfs-tools\)"):
        require_tool("mksquashfs")


def test_failed_tool_shows_its_output() -> None:
    with pytest.raises(Exception, match="exit code 3") as err:
        run(["sh", "-c", "echo why-it-failed; exit 3"])
    assert "why-it-failed" in str(err.value)


def test_install_deps_covers_every_tool_package() -> None:
    for package in (
        "mmdebstrap",
        "squashfs-tools",
        "mtools",
        "dosfstools",
        "qemu-system-x86",
        "ovmf",
        "grub-pc-bin",
        "grub-efi-amd64-bin",
        "xorriso",
        "libmagic1",
        "qemu-utils",
        "swtpm",
        "swtpm-tools",
    ):
        assert package in APT_HOST_PACKAGES


def test_kvm_probe_is_a_valid_boot_sector_with_an_fpu_instruction() -> None:
    assert len(_PROBE_SECTOR) == 512 and _PROBE_SECTOR.endswith(b"\x55\xaa")
    assert b"\x9b\xdb\xe3" in _PROBE_SECTOR[:0x1A]  # finit: what the broken nested KVM trips on
    # mov si, imm16 points at the message that follows the code.
    offset = _PROBE_SECTOR.index(b"\xbe") + 1
    address = int.from_bytes(_PROBE_SECTOR[offset : offset + 2], "little")
    assert _PROBE_SECTOR[address - 0x7C00 :].startswith(b"KVMOK\n")


def test_marker_only_matches_whole_lines() -> None:
    assert MARKER.search(b"KAIROS-BOOT-REPORT flavor=deb") is None
    match = MARKER.search(b"noise\r\nKAIROS-BOOT-REPORT flavor=debian live=squashfs\r\n")
    assert match and match.group("fields") == b"flavor=debian live=squashfs"


def test_root_expectations() -> None:
    assert check_root({"live": "squashfs"}, "live") is None
    assert re.search("live squashfs", check_root({"live": "none"}, "live") or "")
    assert check_root({"live": "none"}, "any") is None


def test_artifact_kinds(tmp_path: Path) -> None:
    assert "media=cdrom" in " ".join(artifact_drive(tmp_path / "a.iso"))
    assert "format=qcow2" in " ".join(artifact_drive(tmp_path / "a.qcow2"))
    with pytest.raises(InputError):
        artifact_drive(tmp_path / "a.txt")


def _make_slowly(cache_root: str, marker: str) -> str:
    import time as _time

    def make(target: Path) -> None:
        with open(marker, "a") as log_file:
            log_file.write("made\n")
        _time.sleep(0.5)
        (target / "content").write_text("done")

    return str(Cache(Path(cache_root)).get_or_make("rootfs", "shared", make))


def test_two_builds_at_once_make_an_entry_once(tmp_path: Path) -> None:
    from concurrent.futures import ProcessPoolExecutor

    marker = tmp_path / "makes.log"
    with ProcessPoolExecutor(2) as pool:
        paths = list(pool.map(_make_slowly, [str(tmp_path / "c")] * 2, [str(marker)] * 2))
    assert paths[0] == paths[1]
    assert marker.read_text() == "made\n"  # the second build waited and reused the first's entry
    assert (Path(paths[0]) / "content").read_text() == "done"


def test_progress_bars_only_for_a_person_at_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    from kairos_build.core import log as logmod

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Tty()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(logmod, "_show_progress", True)
    with logmod.progress(4096, "pulling x") as bar:
        bar.update(4096)
    assert "pulling x" in terminal.getvalue()  # tqdm drew on the terminal

    logmod.quiet_progress()  # what --json does
    quiet = Tty()
    monkeypatch.setattr(sys, "stderr", quiet)
    with logmod.progress(4096, "pulling x") as bar:
        bar.update(4096)
    assert quiet.getvalue() == ""

    monkeypatch.setattr(logmod, "_show_progress", True)
    piped = io.StringIO()  # not a terminal: CI logs stay clean
    monkeypatch.setattr(sys, "stderr", piped)
    with logmod.progress(4096, "pulling x") as bar:
        bar.update(4096)
    assert piped.getvalue() == ""
