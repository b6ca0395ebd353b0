"""The command line: Typer verbs that parse, call one pipeline and print; their options come
from the settings table (kairos_build.config.settings)."""

from __future__ import annotations


def main() -> None:
    """The `kairos-build` console script. It names this package, as it did before the verbs
    moved into cli/app.py, so a console script installed by an older version still starts."""
    from kairos_build.cli.app import main as run

    run()
