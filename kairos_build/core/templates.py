"""Render the Jinja2 templates in templates/."""

from __future__ import annotations

from typing import Any

import jinja2

from kairos_build.core.data import data_dir


def render(template: str, **values: Any) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(data_dir("templates")),
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, not an empty string
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders config files, not HTML
    )
    return env.get_template(template).render(**values)
