"""The build manifest's logic: what it records of the settings and their files, what it refuses
to read, and how two manifests' differences are named."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kairos_build.core.errors import InputError
from kairos_build.publish import manifest


def recorded(tmp_path: Path) -> dict[str, Any]:
    config = tmp_path / "cc.yaml"
    config.write_text("#cloud-config\nhostname: a\n")
    settings = {
        "flavor": "debian",
        "base": "bootstrap:debian/trixie",
        "version": "v1.0.0",
        "kernel-arg": ["quiet"],
        "compress": False,
        "cloud-config": str(config),
        "output": "/somewhere",
        "cache-dir": "/cache",
        "json": True,
    }
    return {
        "kairos-build-manifest": manifest.FORMAT,
        "artifact": {"file": "a.iso", "format": "iso", "sha256": "0" * 64, "size": 1},
        "base": {"ref": "bootstrap:debian/trixie", "key": "k1", "description": "d"},
        "settings": manifest.settings_record(settings),
        "inputs": manifest.input_files(settings),
        "source_date_epoch": 1,
        "stages": [["rootfs", "k1"], ["converted", "c1"]],
        "packages": {"database": "dpkg", "count": 2, "sha256": "p1"},
        "tool": {"kairos-build": "0.2.0"},
        "python": {},
        "host_tools": {"sfdisk": "fdisk 2.38"},
    }


def test_settings_are_recorded_without_where_the_build_wrote(tmp_path: Path) -> None:
    record = recorded(tmp_path)
    assert set(record["settings"]) == {"flavor", "base", "version", "kernel-arg", "compress", "cloud-config"}
    assert set(record["inputs"]) == {"cloud-config"}
    values = manifest.settings_values(record["settings"])
    assert values["kernel-arg"] == ("quiet",) and values["compress"] is False
    assert values["cloud-config"] == Path(record["settings"]["cloud-config"])


def test_what_load_refuses(tmp_path: Path) -> None:
    path = tmp_path / "a.iso.build.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        manifest.load(path)
    path.write_text(json.dumps({"kairos-build-manifest": 99}))
    with pytest.raises(InputError, match="not a build manifest of this kairos-build"):
        manifest.load(path)
    record = recorded(tmp_path)
    record["settings"]["turbo"] = True
    path.write_text(json.dumps(record))
    with pytest.raises(InputError, match="setting this kairos-build does not know: turbo") as info:
        manifest.load(path)
    assert info.value.hint and info.value.hint.endswith("it names: 0.2.0")
    with pytest.raises(InputError, match="cannot read"):
        manifest.load(tmp_path / "missing.build.json")


def test_a_missing_input_file_is_named(tmp_path: Path) -> None:
    record = recorded(tmp_path)
    Path(record["settings"]["cloud-config"]).unlink()
    with pytest.raises(InputError, match="the manifest's cloud-config"):
        manifest.settings_values(record["settings"])


def test_differences_name_each_changed_input(tmp_path: Path) -> None:
    old = recorded(tmp_path)
    assert manifest.differences(old, copy.deepcopy(old)) == []
    new = copy.deepcopy(old)
    new["base"]["key"] = "k2"
    new["settings"]["version"] = "v2.0.0"
    new["inputs"]["cloud-config"] = {"sha256": "f" * 64}
    new["source_date_epoch"] = 2
    new["packages"] = {"database": "dpkg", "count": 3, "sha256": "p2"}
    new["host_tools"]["sfdisk"] = "fdisk 2.39"
    new["stages"][1] = ["converted", "c2"]
    found = manifest.differences(old, new)
    assert found[0] == "the base bootstrap:debian/trixie: k1 -> k2"
    assert "setting version: v1.0.0 -> v2.0.0" in found
    assert any(f.startswith("cloud-config ") and f.endswith(f"sha256 {'f' * 12}") for f in found)
    assert "SOURCE_DATE_EPOCH: 1 -> 2" in found
    assert "the image's packages differ (2 -> 3 packages)" in found
    assert "host tools sfdisk: fdisk 2.38 -> fdisk 2.39" in found
    assert found[-1] == "stages with other inputs: converted"


def test_package_changes_between_two_sboms(tmp_path: Path) -> None:
    def sbom(path: Path, packages: dict[str, str]) -> Path:
        path.write_text(
            json.dumps(
                {
                    "packages": [
                        {"SPDXID": f"SPDXRef-Package-deb-{i}-{n}", "name": n, "versionInfo": v}
                        for i, (n, v) in enumerate(packages.items())
                    ]
                }
            )
        )
        return path

    old = sbom(tmp_path / "old.json", {"bash": "5.2-1", "curl": "8.0"})
    new = sbom(tmp_path / "new.json", {"bash": "5.2-2", "zstd": "1.5"})
    assert manifest.package_changes(old, new) == [
        "bash 5.2-1 -> 5.2-2",
        "curl 8.0 -> (none)",
        "zstd (none) -> 1.5",
    ]
