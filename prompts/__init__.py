"""Prompt text: one Jinja2 template file per role or strategy, rendered by `render`.

Templates use StrictUndefined, so a renamed or missing variable fails loudly at render time (and in
the unit test that renders every template) instead of silently becoming an empty string.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_source),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _load_source(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def template_names() -> list[str]:
    """Every template file shipped in this package."""
    return sorted(
        entry.name for entry in resources.files(__name__).iterdir() if entry.name.endswith(".j2")
    )


def render_file(path: Path, **variables: Any) -> str:
    """Render a template file of the user's (a referee's description from a config file), StrictUndefined."""
    template = _environment().from_string(path.read_text(encoding="utf-8"))
    return template.render(**variables).strip()


def render(name: str, **variables: Any) -> str:
    """Render template `name` (with or without the .j2 suffix); surrounding blank space is trimmed."""
    filename = name if name.endswith(".j2") else f"{name}.j2"
    return _environment().get_template(filename).render(**variables).strip()
