from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kairos_build.errors import InputError
from kairos_build.flavors import flavor_names, load_flavor, parse_flavor


def write_flavor(folder: Path, name: str, **changes: object) -> Path:
    data = yaml.safe_load((Path(__file__).parents[2] / "flavors" / "debian.yaml").read_text())
    data["name"] = name
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_debian_flavor_loads_with_trixie_default_and_bookworm() -> None:
    flavor = load_flavor("debian")
    assert flavor.family == "debian" and flavor.package_manager == "apt"
    assert flavor.init == "systemd" and flavor.bootloader == "grub" and flavor.initramfs == "dracut"
    assert flavor.release(None).name == "trixie"
    assert flavor.release("bookworm").bootstrap is not None
    assert flavor.release("bookworm").bootstrap.suite == "bookworm"  # type: ignore[union-attr]
    packages = flavor.all_packages()
    for role in ("kernel", "init", "initramfs", "bootloader", "filesystem"):
        assert flavor.packages[role], role
    wanted = {"linux-image-amd64", "dracut", "dracut-live", "grub-pc-bin", "grub-efi-amd64-bin"}
    assert wanted <= set(packages)
    assert len(packages) == len(set(packages))
    assert "debian" in flavor_names()


def test_unknown_flavor_lists_the_known_ones() -> None:
    with pytest.raises(InputError) as err:
        load_flavor("nosuchos")
    assert "unknown flavor 'nosuchos'" in str(err.value) and "debian" in str(err.value)


def test_path_like_flavor_name_is_refused() -> None:
    with pytest.raises(InputError):
        load_flavor("../flavors/debian")


def test_unknown_release_names_the_choices() -> None:
    with pytest.raises(InputError) as err:
        load_flavor("debian").release("sid")
    assert "bookworm, trixie" in str(err.value)


@pytest.mark.parametrize(("changes", "key", "fix"), [
    ({"packge_manager": "apt"}, "packge_manager", "package_manager"),
    ({"init": "upstart"}, "init", "systemd, openrc"),
    ({"family": None}, "family", "add family:"),
    ({"default_release": "sid"}, "default_release", "trixie"),
    ({"packages": {"kernel": "linux-image-amd64"}}, "packages", "kernel:"),
    ({"releases": {"trixie": {"image": "x"}}}, "releases.trixie.flavor_release", "add flavor_release"),
    ({"releases": {"trixie": {"flavor_release": "13", "image": "x",
                              "bootstrap": {"tool": "m", "suite": "t", "varient": "x"}}}},
     "releases.trixie.bootstrap.varient", "variant"),
])
def test_a_wrong_key_names_file_key_and_fix(tmp_path: Path, changes: dict[str, object], key: str,
                                            fix: str) -> None:
    path = write_flavor(tmp_path, "mine", **changes)
    with pytest.raises(InputError) as err:
        parse_flavor(path)
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message and fix in message, message


def test_name_must_match_file(tmp_path: Path) -> None:
    path = write_flavor(tmp_path, "mine")
    path.rename(tmp_path / "other.yaml")
    with pytest.raises(InputError, match="name it 'other'"):
        parse_flavor(tmp_path / "other.yaml")


def test_not_yaml_mapping(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="must be a YAML mapping"):
        parse_flavor(path)
