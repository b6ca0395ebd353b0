"""Typer options made from the settings table (kairos_build.config.settings): a verb declares only its
own arguments; `@verb(app, NAME)` adds the options of every setting NAME takes and hands the
verb a CommandLine (config file, --set, flags) to resolve them with.

Typer reads a command's options from its signature, so the signature is composed here once,
from the table, for every verb alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from kairos_build.config.configfile import CommandLine
from kairos_build.config.settings import Setting, Value, global_settings, settings_of

_TYPES: dict[str, Any] = {"text": str, "path": Path, "flag": bool, "list": list[str]}
COMMAND_LINE = "command_line"


def _help(setting: Setting) -> str:
    parts = [setting.help]
    if setting.choices:
        parts.append(f"({setting.allowed()})")
    if setting.kind == "list":
        parts.append("(repeatable)")
    if setting.default not in (None, (), False):
        parts.append(f"(default: {setting.default})")
    return " ".join(parts)


def _parameter(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def setting_parameters(settings: Iterable[Setting]) -> list[inspect.Parameter]:
    """One option per setting (None when not given: a lower layer then decides), plus a hidden
    one per former name."""
    found = []
    for s in settings:
        decls = [s.flag, *([s.short] if s.short else [])]
        kind = _TYPES[s.kind]
        found.append(_parameter(s.name, Annotated[kind | None, typer.Option(*decls, help=_help(s))]))
        found.extend(
            _parameter(_former_name(former), Annotated[kind | None, typer.Option(former, hidden=True)])
            for former in s.former
        )
    return found


def _former_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def take_flags(settings: Iterable[Setting], kwargs: dict[str, Any]) -> dict[str, Value]:
    """Remove the settings' options from `kwargs`; the ones given, by key."""
    flags: dict[str, Value] = {}
    for s in settings:
        value = kwargs.pop(s.name, None)
        for former in s.former:
            old = kwargs.pop(_former_name(former), None)
            value = old if value is None else value
        if value is not None:
            flags[s.key] = tuple(value) if isinstance(value, list) else value
    return flags


def _compose(
    body: Callable[..., Any], extra: list[inspect.Parameter], run: Callable[..., None]
) -> Callable[..., None]:
    # Keyword-only, all of them: Typer passes every value by name, and the order of the
    # parameters (arguments first) is then free of Python's default-after-non-default rule.
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(body, eval_str=True).parameters.values()
        if p.name != COMMAND_LINE
    ]
    parameters = [*own, *extra]
    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    run.__doc__ = body.__doc__
    run.__name__ = body.__name__
    return run


def verb(
    app: typer.Typer, name: str, settings_from: str | None = None, help: str | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register `body` as `name`: its own parameters, the options of the settings that
    `settings_from` (default: `name`) takes, and `command_line` with everything said about them."""
    table = settings_of(settings_from or name)

    def register(body: Callable[..., None]) -> Callable[..., None]:
        def run(ctx: typer.Context, **kwargs: Any) -> None:
            flags = take_flags(table, kwargs)
            outer = ctx.find_root().obj
            command_line = outer if isinstance(outer, CommandLine) else CommandLine()
            body(**kwargs, command_line=command_line.with_flags(flags))

        context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        command = _compose(body, [context, *setting_parameters(table)], run)
        app.command(name.split()[-1], help=help)(command)
        return body

    return register


def global_callback(app: typer.Typer) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `body` as the options before any verb: its own (-v, -q, --config, --set) and
    the global settings; what they say about settings is kept for the verb."""
    table = global_settings()

    def register(body: Callable[..., Any]) -> Callable[..., Any]:
        def run(ctx: typer.Context, **kwargs: Any) -> None:
            flags = take_flags(table, kwargs)
            ctx.obj = body(**kwargs).with_flags(flags)

        context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        app.callback()(_compose(body, [context, *setting_parameters(table)], run))
        return body

    return register
