"""Host tools are checked per stage: a build demands only what its own stages drive."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos_build.config.buildconfig import config_of
from kairos_build.core.errors import MissingToolError
from kairos_build.exporters.iso import IsoExporter
from kairos_build.exporters.raw import RawExporter
from kairos_build.pipelines import build


@pytest.fixture()
def missing(monkeypatch: pytest.MonkeyPatch) -> tuple[set[str], list[str]]:
    """The programs the host lacks (fill it in) and every program a check asked for."""
    absent: set[str] = set()
    asked: list[str] = []

    def require_tool(name: str) -> str:
        asked.append(name)
        if name in absent:
            raise MissingToolError(f"missing host tool '{name}' (package {name})", hint="install it")
        return f"/usr/bin/{name}"

    monkeypatch.setattr(build, "require_tool", require_tool)
    monkeypatch.setattr(build, "require_file", lambda path: Path(path))
    return absent, asked


def converted_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "converted"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/kairos-release").write_text('KAIROS_VERSION="v0.1.0"\n')
    return tree


def test_a_bootstrap_base_demands_mmdebstrap_and_says_for_what(missing: tuple[set[str], list[str]]) -> None:
    absent, _ = missing
    absent.add("mmdebstrap")
    config = config_of({"flavor": "debian", "release": "trixie", "base": "bootstrap:debian/trixie"})
    with pytest.raises(MissingToolError) as err:
        build.check_host_tools(config, [IsoExporter()])
    assert "'mmdebstrap'" in err.value.message and "resolving the base" in err.value.message
    assert err.value.hint == "install it"


def test_an_already_converted_folder_needs_no_bootstrap_and_no_sandbox(
    missing: tuple[set[str], list[str]], tmp_path: Path
) -> None:
    absent, asked = missing
    absent.update({"mmdebstrap", "unshare", "bwrap", "setpriv"})
    config = config_of({"flavor": "debian", "release": "trixie", "base": f"dir:{converted_tree(tmp_path)}"})
    build.check_host_tools(config, [RawExporter()])
    assert not absent & set(asked), asked
    assert set(RawExporter.tools) <= set(asked)  # the exporter's own are still checked


@pytest.mark.parametrize("base", ["dir:{tmp}", "oci:{tmp}", "docker://debian:trixie", None])
def test_a_base_to_convert_needs_the_sandbox_but_no_mmdebstrap(
    missing: tuple[set[str], list[str]], tmp_path: Path, base: str | None
) -> None:
    absent, asked = missing
    absent.add("mmdebstrap")
    # None: the flavor's own image (docker://), even though a failed pull may fall back to
    # bootstrapping, which then checks mmdebstrap itself.
    config = config_of(
        {"flavor": "debian", "release": "trixie", "base": base.format(tmp=tmp_path) if base else None}
    )
    build.check_host_tools(config, [IsoExporter()])
    assert {"bwrap", "setpriv", "cp"} <= set(asked) and "mmdebstrap" not in asked, asked
    absent.add("bwrap")
    with pytest.raises(MissingToolError, match="'bwrap'.*needed for the conversion"):
        build.check_host_tools(config, [IsoExporter()])


def test_an_exporters_tools_are_demanded_by_its_stage(
    missing: tuple[set[str], list[str]], tmp_path: Path
) -> None:
    absent, _ = missing
    absent.add("mkfs.ext4")
    assert "mkfs.ext4" in RawExporter.tools and "mkfs.ext4" not in IsoExporter.tools
    config = config_of({"flavor": "debian", "release": "trixie", "base": f"dir:{converted_tree(tmp_path)}"})
    build.check_host_tools(config, [IsoExporter()])
    with pytest.raises(MissingToolError, match="'mkfs.ext4'.*needed for the raw export"):
        build.check_host_tools(config, [IsoExporter(), RawExporter()])
