"""Exporters are plugins: every format is registered in the entry-point group."""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import pytest

from kairos_build.core.errors import InputError
from kairos_build.exporters import base
from kairos_build.exporters.base import ENTRY_POINT_GROUP, exporters, get_exporter, installed_formats
from kairos_build.exporters.disk_formats import write_gce_bundle

FORMATS = {"iso", "raw", "qcow2", "vmdk", "vhd", "gce", "netboot", "uki", "uki-image"}


def test_every_format_is_an_entry_point_of_the_installed_package() -> None:
    names = {e.name for e in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert names >= FORMATS


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_exporter_declares_what_it_needs(name: str) -> None:
    exporter = get_exporter(name)
    assert exporter.name == name and exporters()[name] is type(exporter)
    assert exporter.boot_mode in ("secureboot", "trusted")
    assert exporter.tools and all(isinstance(t, str) for t in exporter.tools)


def test_an_unknown_format_lists_the_known_ones() -> None:
    with pytest.raises(InputError) as err:
        get_exporter("floppy")
    assert "floppy" in err.value.message
    assert all(name in (err.value.hint or "") for name in FORMATS)


def test_gce_bundle_depends_on_the_disk_content_not_its_allocation(tmp_path: Path) -> None:
    """Zeros written out and zeros left as a hole are the same disk: the same tar.gz."""
    bundles = []
    for name, zeros_written in (("written", True), ("hole", False)):
        folder = tmp_path / name
        folder.mkdir()
        with (folder / "disk.raw").open("wb") as disk:
            disk.write(b"x" * 4096)
            if zeros_written:
                disk.write(bytes(1 << 20))
            else:
                disk.seek(4096 + (1 << 20))
            disk.write(b"y" * 4096)
            disk.truncate(8 << 20)
        write_gce_bundle(folder / "disk.raw", folder / "bundle.tar.gz", 1700000000, folder / "work")
        bundles.append((folder / "bundle.tar.gz").read_bytes())
    assert (tmp_path / "written/disk.raw").stat().st_blocks > (tmp_path / "hole/disk.raw").stat().st_blocks
    assert bundles[0] == bundles[1]


def test_a_plugin_that_fails_to_load_is_skipped_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """One broken plugin must not break every command: the others are still listed."""
    entries = [
        metadata.EntryPoint("broken", "kb_no_such_plugin:Exporter", ENTRY_POINT_GROUP),
        metadata.EntryPoint("nomembers", "kairos_build.core.errors:InputError", ENTRY_POINT_GROUP),
        metadata.EntryPoint("iso", "kairos_build.exporters.iso:IsoExporter", ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(metadata, "entry_points", lambda group: entries)
    monkeypatch.setattr(base, "_skipped", set())
    warned: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warned.append(record.getMessage())  # type: ignore[method-assign]
    # Only this handler: other tests may have set up logging to a stream since closed.
    monkeypatch.setattr("kairos_build.exporters.base.log.handlers", [handler])
    assert list(installed_formats()) == ["iso"]
    assert len(warned) == 2, warned
    assert "'broken'" in warned[0] and "kb_no_such_plugin" in warned[0]
    assert "'nomembers'" in warned[1] and "extension" in warned[1]
    installed_formats()
    assert len(warned) == 2, "each broken plugin is reported once per run"
    with pytest.raises(InputError, match="unknown format 'broken'"):
        get_exporter("broken")


def test_no_exporter_imports_another() -> None:
    """Shared parts (squashfs, ext4 image, raw disk, kernel, initrd) come from the export
    context; an exporter imports only the protocol's module, and base.py no exporter."""
    import ast

    folder = Path(base.__file__).parent
    for module in folder.glob("*.py"):
        imported = {
            node.module
            for node in ast.walk(ast.parse(module.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
        }
        others = {m for m in imported if m.startswith("kairos_build.exporters")} - {
            "kairos_build.exporters.base"
        }
        assert not others, f"{module.name} imports {others}"
