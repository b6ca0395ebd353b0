"""The verbs that build artifacts: `build --format iso,raw,...` and one verb per installed
format (`iso`, `raw`, `qcow2`, ... and any plugin's), all with the same settings, all through
pipelines.build.build()."""

# No `from __future__ import annotations`: the --format help is made from the installed formats
# when `build` is defined, and Typer reads it from the evaluated annotation.
import json
from collections.abc import Callable
from typing import Annotated

import typer

from kairos_build.cli.options import verb
from kairos_build.config.configfile import CommandLine, effective, resolve_settings
from kairos_build.config.settings import ARTIFACTS
from kairos_build.core.errors import InputError
from kairos_build.core.log import quiet_progress, timings
from kairos_build.exporters.base import installed_formats


def build_artifacts(formats: list[str], command_line: CommandLine) -> None:
    """Resolve the settings, build, print: the whole of every artifact verb."""
    from kairos_build.config.buildconfig import config_from
    from kairos_build.pipelines.build import build as run_build

    values = resolve_settings(ARTIFACTS, command_line)
    if values.get("json"):
        quiet_progress()
    artifacts = run_build(config_from(values), formats)
    if values.get("json"):
        shown = {k: v for k, v in effective(values).items() if k != "json"}
        print(
            json.dumps(
                {"artifacts": [vars(a) for a in artifacts], "timings": timings, "settings": shown},
                indent=2,
                default=str,
            )
        )


def register(app: typer.Typer) -> None:
    found = installed_formats()

    @verb(app, "build")
    def build(
        command_line: CommandLine,
        formats: Annotated[
            str | None,
            typer.Option(  # noqa: UP007
                "--format", help=f"Comma-separated formats, of: {', '.join(found)}."
            ),
        ] = None,
    ) -> None:
        """Build several artifacts in one run; shared parts (rootfs, squashfs, disk) are made once."""
        if not formats:
            raise InputError("no format given", hint="e.g. kairos-build build --format iso,raw,qcow2")
        build_artifacts(list(dict.fromkeys(f.strip() for f in formats.split(",") if f.strip())), command_line)

    for name, plugin in found.items():
        verb(app, name, settings_from=ARTIFACTS, help=plugin.summary)(_format_verb(name))


def _format_verb(name: str) -> Callable[..., None]:
    def artifact(command_line: CommandLine) -> None:
        build_artifacts([name], command_line)

    return artifact
