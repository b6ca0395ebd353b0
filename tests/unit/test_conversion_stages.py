"""Which change re-runs which stage of the conversion: the keys of packages, initramfs and
framework, computed from a copy of the data folders (KAIROS_BUILD_DATA) edited one way at a
time. A stage whose key stays is reused; a changed key makes it and every later one run."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kairos_build.config.buildconfig import BuildConfig, config_of
from kairos_build.convert.stages import framework_stage, initramfs_stage, packages_stage
from kairos_build.source.resolve import Base

REPO = Path(__file__).resolve().parents[2]
MODULE = "overlays/common/usr/lib/dracut/modules.d/90kairos-immutable/module-setup.sh"


def trixie() -> BuildConfig:
    """Debian trixie's config as `--flavor debian --release trixie` makes it."""
    return config_of({"flavor": "debian", "release": "trixie"})


def keys(config: BuildConfig, base_key: str = "base-1") -> dict[str, str]:
    base = Base(Path("/nonexistent"), base_key, "a base")
    packages = packages_stage(config, base)
    initramfs = initramfs_stage(config, base, packages.key)
    framework = framework_stage(config, base, packages.key, initramfs.key)
    return {"packages": packages.key, "initramfs": initramfs.key, "framework": framework.key}


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An editable copy of flavors/, overlays/ and templates/, in use for the test."""
    folder = tmp_path / "data"
    for name in ("flavors", "overlays", "templates"):
        shutil.copytree(REPO / name, folder / name, symlinks=True)
    monkeypatch.setenv("KAIROS_BUILD_DATA", str(folder))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return folder


def append(path: Path, text: str) -> None:
    path.write_text((path.read_text() if path.exists() else "") + text)


def edit_flavor(old: str, new: str) -> Callable[[Path], None]:
    def edit(data: Path) -> None:
        flavor = data / "flavors/debian.yaml"
        assert old in flavor.read_text()
        flavor.write_text(flavor.read_text().replace(old, new))

    return edit


# change -> the stages it must re-run (every later stage follows from the keys' chain)
CHANGES: dict[str, tuple[Callable[[Path], None], set[str]]] = {
    "a framework file outside the initramfs": (
        lambda d: append(d / "overlays/common/etc/cloud/cloud.cfg.d/05-kairos.cfg", "# x\n"),
        {"framework"},
    ),
    "a new framework file": (lambda d: append(d / "overlays/common/etc/motd", "hello\n"), {"framework"}),
    "the kairos-release template": (lambda d: append(d / "templates/kairos-release.j2", "\n"), {"framework"}),
    "a template of the exporters only": (lambda d: append(d / "templates/grub-live.cfg.j2", "\n"), set()),
    "our dracut module": (lambda d: append(d / MODULE, "# x\n"), {"initramfs", "framework"}),
    "the dracut configuration": (
        lambda d: append(d / "overlays/common/etc/dracut.conf.d/10-kairos.conf", "# x\n"),
        {"initramfs", "framework"},
    ),
    "one more package": (
        edit_flavor("system: [login,", "system: [htop, login,"),
        {"packages", "initramfs", "framework"},
    ),
    "the flavor's install environment": (
        edit_flavor('install_env: {INITRD: "No"}', 'install_env: {INITRD: "No", X: "1"}'),
        {"packages", "initramfs", "framework"},
    ),
    "a file the package scripts read": (
        edit_flavor("quirks:\n", 'quirks:\n  files: {etc/x.conf: "x\\n"}\n'),
        {"packages", "initramfs", "framework"},
    ),
    "a service to enable": (
        edit_flavor("quirks:\n", "quirks:\n  services: {enable: [ssh.service]}\n"),
        {"framework"},
    ),
    "the flavor's Secure Boot paths and comments": (
        edit_flavor("# Debian: the flavor", "# Debian, edited: the flavor"),
        set(),
    ),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_reruns_exactly_the_stages_it_reaches(change: str, data: Path) -> None:
    before = keys(trixie())
    edit, expected = CHANGES[change]
    edit(data)
    after = keys(trixie())
    assert {stage for stage in before if before[stage] != after[stage]} == expected


@pytest.mark.parametrize(
    ("settings", "fields"),
    # variant and model are no settings (yet): BuildConfig's own fields, set on the result
    [({"version": "v9.9.9"}, {}), ({}, {"variant": "standard"}), ({}, {"model": "rpi4"})],
)
def test_release_values_reach_the_framework_only(
    data: Path, settings: dict[str, str], fields: dict[str, Any]
) -> None:
    before = keys(trixie())
    after = keys(replace(config_of({"flavor": "debian", "release": "trixie", **settings}), **fields))
    assert {s for s in before if before[s] != after[s]} == {"framework"}


def test_the_base_and_the_build_date_reach_every_stage(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = trixie()
    before = keys(config)
    assert all(before[s] != keys(config, "base-2")[s] for s in before)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    dated = keys(config)
    assert all(before[s] != dated[s] for s in before)


def test_the_same_inputs_give_the_same_keys_and_the_stages_differ(data: Path) -> None:
    first, second = keys(trixie()), keys(trixie())
    assert first == second
    assert len(set(first.values())) == 3
    assert keys(config_of({"flavor": "debian", "release": "bookworm"})) != first
