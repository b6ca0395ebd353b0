"""One declaration per setting: config file, --set, flags and the docs/settings.md table agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos_build.config.configfile import CommandLine, read_config_file, resolve_settings
from kairos_build.config.settings import BY_KEY, SETTINGS, options_of, options_table, settings_of
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


def test_every_verb_takes_each_key_once_and_files_know_each_key_once() -> None:
    verbs = {v for s in SETTINGS for v in s.verbs}
    for verb_name in verbs:
        keys = [s.key for s in (*settings_of(verb_name), *options_of(verb_name))]
        assert len(keys) == len(set(keys)), verb_name
    file_keys = [s.key for s in SETTINGS if not s.command_line_only]
    assert len(file_keys) == len(set(file_keys)) == len(BY_KEY)


def test_command_line_only_options_are_no_config_keys(tmp_path: Path) -> None:
    # `output` in a file is the build's folder: it never reaches convert's or rebuild's --output.
    config = tmp_path / "k.yaml"
    config.write_text("output: dist\n")
    assert "output" not in resolve_settings("convert", CommandLine(config))
    with pytest.raises(InputError, match="unknown setting 'timeout'"):
        resolve_settings("boot", CommandLine(sets=("timeout=5",)))


def test_the_former_boot_firmware_option_still_works_and_warns(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.iso")
    result = run_cli("boot", "--firmware", "coreboot", missing)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "warning: --firmware is deprecated; use --machine-firmware", result.stderr
    # The value given under the former name is the one used (and checked).
    assert "error: --machine-firmware 'coreboot' is not known" in lines, result.stderr
    taken = run_cli("boot", "--firmware", "uefi", missing)
    assert taken.returncode == 2 and "does not exist" in taken.stderr, taken.stderr
    assert "deprecated" in taken.stderr
    current = run_cli("boot", "--machine-firmware", "uefi", missing)
    assert current.returncode == 2 and "deprecated" not in current.stderr, current.stderr


def test_verb_options_are_checked_before_any_work(tmp_path: Path) -> None:
    result = run_cli("check", "--mode", "bogus", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --mode 'bogus' is not known",
        "hint: use trusted|secureboot|auto",
    ]
    missing = run_cli("inject", str(tmp_path / "a.iso"))
    assert missing.returncode == 2 and "Missing option '--cloud-config'" in missing.stderr


def test_config_of_takes_settings_as_a_user_gives_them(tmp_path: Path) -> None:
    from kairos_build.config.buildconfig import config_from, config_of

    given = {"flavor": "debian", "version": "1.2.3", "compression": "xz", "partition-size": ["state=8G"]}
    config = config_of({**given, "cache-dir": tmp_path})
    sets = ("version=1.2.3", "compression=xz", "partition-size=state=8G", f"cache-dir={tmp_path}")
    assert config == config_from(resolve_settings("build", CommandLine(sets=sets)))
    assert config.version == "v1.2.3" and config.squashfs_compression.spec == "xz+x86"
    with pytest.raises(InputError, match="did you mean compression?"):
        config_of({"compresion": "xz"})
    with pytest.raises(InputError, match="--pull 'sometimes' is not known"):
        config_of({"pull": "sometimes"})


def test_the_boot_options_are_the_boot_spec() -> None:
    from dataclasses import fields

    from kairos_build.boot.harness import BootSpec

    named = {s.name for s in options_of("boot")}
    assert named <= {f.name for f in fields(BootSpec)}
    # What no option gives: the log folder and the accelerator (tests, the KVM probe).
    assert {f.name for f in fields(BootSpec)} - named == {"artifact", "log_dir", "accel"}
