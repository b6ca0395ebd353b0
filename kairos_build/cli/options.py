"""Typer options made from the settings table (kairos_build.config.settings): a verb declares only its
own arguments; `@verb(app, NAME)` adds the options of every setting NAME takes and hands the
verb a CommandLine (config file, --set, flags) to resolve them with, and the value of each of
its command-line-only options as a keyword argument.

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
from kairos_build.config.settings import Setting, Value, global_settings, options_of, settings_of
from kairos_build.core.log import log

_TYPES: dict[str, Any] = {
    "text": str,
    "path": Path,
    "flag": bool,
    "list": list[str],
    "int": int,
    "float": float,
}
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


def _parameter(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _option(s: Setting) -> inspect.Parameter:
    decls = [s.flag, *([s.short] if s.short else [])]
    kind = _TYPES[s.kind]
    if not s.command_line_only:  # None when not given: a lower layer then decides
        return _parameter(s.name, Annotated[kind | None, typer.Option(*decls, help=_help(s))])
    # No lower layer: the default is Typer's, shown as Typer shows it, and the help is written
    # whole (it names the choices its own way).
    option = typer.Option(*decls, help=s.help)
    if s.required:
        return _parameter(s.name, Annotated[kind, option], inspect.Parameter.empty)
    return _parameter(s.name, Annotated[kind if s.default is not None else kind | None, option], s.default)


def setting_parameters(settings: Iterable[Setting]) -> list[inspect.Parameter]:
    """One option per setting, plus a hidden one per former name."""
    found = []
    for s in settings:
        found.append(_option(s))
        found.extend(
            _parameter(
                _former_name(former), Annotated[_TYPES[s.kind] | None, typer.Option(former, hidden=True)]
            )
            for former in s.former
        )
    return found


def _former_name(flag: str) -> str:
    return "former_" + flag.lstrip("-").replace("-", "_")


def _former_value(s: Setting, kwargs: dict[str, Any]) -> Any:
    """The value given under a former name of `s` (None if none was), with a warning."""
    value = None
    for former in s.former:
        old = kwargs.pop(_former_name(former), None)
        if old is not None:
            log.warning("warning: %s is deprecated; use %s", former, s.flag)
            value = old
    return value


def take_flags(settings: Iterable[Setting], kwargs: dict[str, Any]) -> dict[str, Value]:
    """Remove the settings' options from `kwargs`; the ones given, by key."""
    flags: dict[str, Value] = {}
    for s in settings:
        value = kwargs.pop(s.name, None)
        old = _former_value(s, kwargs)
        value = old if value is None else value
        if value is not None:
            flags[s.key] = tuple(value) if isinstance(value, list) else value
    return flags


def _not_given(ctx: typer.Context, name: str) -> bool:
    # By name: Typer carries its own copy of click, whose ParameterSource is not click's.
    source = ctx.get_parameter_source(name)
    return source is None or source.name == "DEFAULT"


def take_options(options: Iterable[Setting], kwargs: dict[str, Any], ctx: typer.Context) -> dict[str, Any]:
    """Remove the command-line-only options from `kwargs`: their values, checked, by name."""
    found: dict[str, Any] = {}
    for s in options:
        value = kwargs.pop(s.name)
        old = _former_value(s, kwargs)
        if old is not None and _not_given(ctx, s.name):
            value = old
        found[s.name] = s.validate(value)
    return found


def _compose(
    body: Callable[..., Any],
    extra: list[inspect.Parameter],
    run: Callable[..., None],
    options: tuple[Setting, ...] = (),
) -> Callable[..., None]:
    # Keyword-only, all of them: Typer passes every value by name, and the order of the
    # parameters (arguments first) is then free of Python's default-after-non-default rule.
    # The body's parameters that receive its options come from the table, not from the body.
    body_parameters = inspect.signature(body, eval_str=True).parameters.values()
    received = {p.name for p in body_parameters} | (
        {s.name for s in options} if any(p.kind is p.VAR_KEYWORD for p in body_parameters) else set()
    )
    if missing := [s.flag for s in options if s.name not in received]:
        raise TypeError(f"{body.__name__} takes no parameter for {', '.join(missing)}")
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in body_parameters
        if p.name != COMMAND_LINE and p.kind is not p.VAR_KEYWORD and p.name not in {s.name for s in options}
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
    """Register `body` as `name`: its own parameters, its command-line-only options (each
    handed to `body` by name, checked), the options of the settings that `settings_from`
    (default: `name`) takes, and `command_line` with everything said about those."""
    table = settings_of(settings_from or name)
    options = options_of(name)

    def register(body: Callable[..., None]) -> Callable[..., None]:
        takes_command_line = COMMAND_LINE in inspect.signature(body).parameters

        def run(ctx: typer.Context, **kwargs: Any) -> None:
            flags = take_flags(table, kwargs)
            values = take_options(options, kwargs, ctx)
            outer = ctx.find_root().obj
            command_line = outer if isinstance(outer, CommandLine) else CommandLine()
            if takes_command_line:
                kwargs[COMMAND_LINE] = command_line.with_flags(flags)
            body(**kwargs, **values)

        context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        parameters = [context, *setting_parameters(options), *setting_parameters(table)]
        command = _compose(body, parameters, run, options)
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
