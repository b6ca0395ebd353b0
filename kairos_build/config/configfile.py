"""Where a setting's value comes from: built-in default < flavor < config file (`--config`) <
`--set KEY=VALUE` and flags. Every value carries its origin (a file and line, `--set`, a flag)
so that a bad one is reported where the user wrote it."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kairos_build.config.settings import BY_KEY, SETTINGS, Setting, Value, settings_of
from kairos_build.core.errors import InputError

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclass(frozen=True)
class Given:
    value: Value
    origin: str  # "default", "FILE:LINE", "--set", "--flag"


@dataclass(frozen=True)
class CommandLine:
    """What the command line said about settings: a config file, `--set`s and flags (the
    global ones before the verb, overridden by the verb's own)."""

    config_file: Path | None = None
    sets: tuple[str, ...] = ()
    flags: dict[str, Value] = field(default_factory=dict)

    def with_flags(self, flags: Mapping[str, Value]) -> CommandLine:
        return CommandLine(self.config_file, self.sets, {**self.flags, **flags})


def nearest_key(key: str) -> str:
    close = difflib.get_close_matches(key, list(BY_KEY), n=1)
    return f"did you mean {close[0]}?" if close else f"known keys: {', '.join(BY_KEY)}"


def _known(key: str, where: str) -> Setting:
    if key not in BY_KEY:
        raise InputError(f"{where}: unknown setting {key!r}", hint=nearest_key(key))
    return BY_KEY[key]


def _boolean(setting: Setting, text: str, where: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise InputError(
        f"{where}: {setting.key} {text!r} is not true or false",
        hint=f"{setting.key} takes {setting.allowed()}",
    )


def _from_text(setting: Setting, text: str, where: str, folder: Path | None = None) -> Value:
    """One value written as text (a YAML scalar, the right side of --set)."""
    if setting.kind == "flag":
        return _boolean(setting, text, where)
    if setting.kind == "list":
        return (text,)
    if setting.kind == "path":
        # A path in a config file is relative to that file, as in a Makefile or compose file.
        return (folder / text) if folder is not None else Path(text)
    return text


def _from_node(setting: Setting, node: yaml.Node, where: str, folder: Path) -> Value:
    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:null":
            return None
        # The text as written: `release: 3.20` is the release 3.20, not the number 3.2.
        return _from_text(setting, str(node.value), where, folder)
    if (
        setting.kind == "list"
        and isinstance(node, yaml.SequenceNode)
        and all(isinstance(item, yaml.ScalarNode) for item in node.value)
    ):
        return tuple(str(item.value) for item in node.value)
    raise InputError(f"{where}: {setting.key} is not {setting.allowed()}", hint=f"write {setting.key}: VALUE")


def read_config_file(path: Path) -> dict[str, Given]:
    """The settings of a YAML config file, each with the line it is on."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the config file {path}: {exc}") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(
            f"{path}{line}: not valid YAML ({problem})", hint="a config file is a mapping of setting: value"
        ) from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise InputError(
            f"{path}:{root.start_mark.line + 1}: a config file is a mapping",
            hint="write one setting: value per line",
        )
    found: dict[str, Given] = {}
    for key_node, value_node in root.value:
        where = f"{path}:{key_node.start_mark.line + 1}"
        setting = _known(str(key_node.value), where)
        found[setting.key] = Given(_from_node(setting, value_node, where, path.parent), where)
    return found


def read_sets(sets: tuple[str, ...]) -> dict[str, Given]:
    """`--set KEY=VALUE` (repeatable; a list setting gathers every --set of its key)."""
    found: dict[str, Given] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        where = f"--set {item}"
        if not sep:
            raise InputError(f"{where}: not KEY=VALUE", hint="e.g. --set pull=never")
        setting = _known(key.strip(), where)
        value = _from_text(setting, text, where)
        earlier = found.get(setting.key)
        if setting.kind == "list" and earlier is not None and isinstance(earlier.value, tuple):
            value = (*earlier.value, *value) if isinstance(value, tuple) else value
        found[setting.key] = Given(value, where)
    return found


def given_settings(verb: str, command_line: CommandLine) -> dict[str, Given]:
    """Each setting of `verb` with its value and where that came from, the last layer winning."""
    layers: dict[str, Given] = {s.key: Given(s.default, "default") for s in settings_of(verb)}
    if command_line.config_file is not None:
        layers.update(read_config_file(command_line.config_file))
    layers.update(read_sets(command_line.sets))
    layers.update(
        {
            key: Given(value, BY_KEY[key].flag)
            for key, value in command_line.flags.items()
            if value is not None
        }
    )
    return {key: given for key, given in layers.items() if BY_KEY[key].takes(verb)}


def resolve_settings(verb: str, command_line: CommandLine) -> dict[str, Value]:
    """The validated value of every setting of `verb`; a bad one names where it was given."""
    values: dict[str, Value] = {}
    for key, given in given_settings(verb, command_line).items():
        try:
            values[key] = BY_KEY[key].validate(given.value)
        except InputError as exc:
            if given.origin in ("default", BY_KEY[key].flag):
                raise
            raise InputError(f"{given.origin}: {exc.message}", hint=exc.hint) from None
    return values


def effective(values: Mapping[str, Value]) -> dict[str, object]:
    """The configuration as JSON values, in the order of SETTINGS."""
    shown: dict[str, object] = {}
    for setting in SETTINGS:
        if setting.key in values:
            value = values[setting.key]
            shown[setting.key] = (
                list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value
            )
    return shown
