from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kairos_build.config.buildconfig import config_of
from kairos_build.config.settings import normalize_version
from kairos_build.core.errors import InputError
from kairos_build.source.refs import BaseRef, parse_ref


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("docker://debian:trixie", BaseRef("docker", "debian:trixie")),
        ("quay.io/kairos/debian:v1", BaseRef("docker", "quay.io/kairos/debian:v1")),
        ("debian", BaseRef("docker", "debian")),
        ("oci:/srv/layout", BaseRef("oci", "/srv/layout")),
        ("oci:/srv/layout:trixie", BaseRef("oci", "/srv/layout", "trixie")),
        ("oci-archive:img.tar:v1.2", BaseRef("oci-archive", "img.tar", "v1.2")),
        ("docker-archive:/tmp/save.tar", BaseRef("docker-archive", "/tmp/save.tar")),
        ("dir:/var/lib/rootfs", BaseRef("dir", "/var/lib/rootfs")),
        ("bootstrap:debian/trixie", BaseRef("bootstrap", "debian/trixie")),
    ],
)
def test_parse_ref(ref: str, expected: BaseRef) -> None:
    assert parse_ref(ref) == expected


def test_a_tag_is_not_split_off_an_existing_path_with_a_colon(tmp_path: Path) -> None:
    odd = tmp_path / "lay:out"
    odd.mkdir()
    assert parse_ref(f"oci:{odd}") == BaseRef("oci", str(odd))


@pytest.mark.parametrize("ref", ["", "docker://", "dir:", "bootstrap:debian", "bootstrap:/trixie"])
def test_malformed_refs_say_which_forms_exist(ref: str) -> None:
    with pytest.raises(InputError) as err:
        parse_ref(ref)
    assert "bootstrap:DISTRO/SUITE" in str(err.value)


@pytest.mark.parametrize(
    ("given", "expected"), [("1.2.3", "v1.2.3"), ("v0.1.0", "v0.1.0"), ("v2.0.0-rc1", "v2.0.0-rc1")]
)
def test_versions_get_a_leading_v(given: str, expected: str) -> None:
    assert normalize_version(given) == expected


@pytest.mark.parametrize("bad", ["latest", "1.2", "v1.2.3;rm -rf /", ""])
def test_bad_versions_are_refused(bad: str) -> None:
    with pytest.raises(InputError):
        normalize_version(bad)


def test_artifact_name_follows_kairos_convention(tmp_path: Path) -> None:
    config = config_of({"flavor": "debian", "version": "1.4.0", "cache-dir": tmp_path})
    assert config.artifact_name == "kairos-debian-13-core-amd64-generic-v1.4.0"
    assert config_of(
        {"flavor": "debian", "release": "bookworm", "cache-dir": tmp_path}
    ).artifact_name.startswith("kairos-debian-12-")


@pytest.mark.parametrize(
    ("settings", "fields"),
    [
        ({"pull": "sometimes"}, {}),
        ({}, {"variant": "huge"}),  # variant and arch are no settings: BuildConfig's own fields
        ({"compression": "rar"}, {}),
        ({}, {"arch": "riscv64"}),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, settings: dict[str, str], fields: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        replace(config_of({"flavor": "debian", "cache-dir": tmp_path, **settings}), **fields)
