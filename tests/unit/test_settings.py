"""One declaration per setting: config file, --set, flags and the docs/settings.md table agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos_build.config.configfile import CommandLine, read_config_file, resolve_settings
from kairos_build.config.settings import options_table
from kairos_build.core.errors import InputError
from tests.conftest import run_cli

SETTINGS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
BEGIN, END = "<!-- options table: begin -->\n", "<!-- options table: end -->\n"


def test_the_docs_options_table_is_the_declarations() -> None:
    text = SETTINGS_PAGE.read_text()
    table = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    assert table == options_table(), "docs/settings.md table out of date: paste settings.options_table()"


def test_precedence_default_then_file_then_set_then_flag(tmp_path: Path) -> None:
    config = tmp_path / "kairos-build.yaml"
    config.write_text("pull: never\nversion: 1.2.3\nkernel-arg: [quiet, rd.debug]\nrelease: '3.20'\n")
    values = resolve_settings("build", CommandLine(config, ("version=2.0.0",), {"pull": "always"}))
    assert values["pull"] == "always" and values["version"] == "v2.0.0"
    assert values["kernel-arg"] == ("quiet", "rd.debug") and values["release"] == "3.20"
    assert values["compression"] == "zstd"  # the built-in default
    assert read_config_file(config)["pull"].origin == f"{config}:1"


def test_paths_in_a_config_file_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "extra").mkdir()
    config = tmp_path / "k.yaml"
    config.write_text("overlay-rootfs: extra\n")
    values = resolve_settings("build", CommandLine(config))
    assert values["overlay-rootfs"] == (tmp_path / "extra").resolve()


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("pull: never\nflavour: debian\n", [":2", "'flavour'", "did you mean flavor?"]),
        (
            "flavor: debian\npull: sometimes\n",
            [":2", "--pull 'sometimes' is not known", "missing|always|never"],
        ),
        ("compress: perhaps\n", [":1", "true or false"]),
        ("pull: [never\n", [":2", "not valid YAML"]),
    ],
)
def test_config_file_errors_name_the_file_and_line(tmp_path: Path, text: str, needles: list[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(InputError) as err:
        resolve_settings("build", CommandLine(config))
    shown = f"{err.value.message} {err.value.hint}"
    assert str(config) in shown and all(n in shown for n in needles), shown


def test_set_errors_name_the_key() -> None:
    with pytest.raises(InputError) as err:
        resolve_settings("build", CommandLine(sets=("platfrom=linux/arm64",)))
    assert "'platfrom'" in err.value.message and "did you mean platform?" in (err.value.hint or "")
    with pytest.raises(InputError, match="not KEY=VALUE"):
        resolve_settings("build", CommandLine(sets=("pull",)))


def test_the_command_line_exits_2_with_one_message(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("firmware: coreboot\n")
    result = run_cli("--config", str(config), "iso", "--output", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {config}:1: --firmware 'coreboot' is not known"], result.stderr
    unknown = run_cli("--set", "no-cahce=true", "iso")
    assert unknown.returncode == 2 and "did you mean no-cache?" in unknown.stderr


def test_global_options_before_the_verb_reach_it(tmp_path: Path) -> None:
    result = run_cli("--json", "--cache-dir", str(tmp_path / "c"), "cache", "ls")
    assert result.returncode == 0, result.stderr
    assert '"cache-dir"' in result.stdout and str(tmp_path / "c") in result.stdout


def test_formats_lists_the_installed_formats() -> None:
    result = run_cli("formats", "--json")
    assert result.returncode == 0, result.stderr
    for name in ("iso", "raw", "qcow2", "vmdk", "vhd", "gce", "netboot"):
        assert f'"name": "{name}"' in result.stdout
