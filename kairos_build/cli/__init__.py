"""The command line: Typer verbs that parse, call one pipeline and print; their options come
from the settings table (kairos_build.config.settings)."""
