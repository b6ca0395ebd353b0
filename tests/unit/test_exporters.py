"""Exporters are plugins: every format is registered in the entry-point group."""

from __future__ import annotations

from importlib import metadata

import pytest

from kairos_build.errors import InputError
from kairos_build.exporters.base import ENTRY_POINT_GROUP, exporters, get_exporter

FORMATS = {"iso", "raw", "qcow2", "vmdk", "vhd", "gce", "netboot"}


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
