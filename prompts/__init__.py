"""Prompt text: one Jinja2 template file per role or strategy, rendered by `render`.

Templates use StrictUndefined, so a renamed or missing variable fails loudly at render time (and in
the unit test that renders every template) instead of silently becoming an empty string.

A user may replace the body of a role's prompt (`ROLE_VARIABLES`: the generator's system prompt, the reviewer's and
each judge strategy's request) with a template of their own (`render_role`). The answer format is not theirs to
write: it comes from the output contract, in the role's `ROLE_format.j2`, and is added after their text, so a
custom template cannot break parsing. `check_template` refuses, before any call, a template with a syntax error or
a variable its role does not have, naming the file and line.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes

# The roles whose prompt a user may replace, and the variables each template may use.
ROLE_VARIABLES: dict[str, tuple[str, ...]] = {
    "generator_system": (),
    "reviewer": ("question", "answer"),
    "judge_direct": ("question", "answer_a", "answer_b"),
    "judge_independent": ("question", "answer", "scale"),
    "judge_combined": ("question", "answers", "scale"),
}


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
    return list(_shipped_templates())


@cache
def _shipped_templates() -> tuple[str, ...]:
    # Listed once a process: `render_role` asks on every call (a directory listing was 1% of a run's CPU).
    return tuple(sorted(entry.name for entry in resources.files(__name__).iterdir() if entry.name.endswith(".j2")))


def render_file(path: Path, **variables: Any) -> str:
    """Render a template file of the user's (a referee's description from a config file), StrictUndefined."""
    template = _environment().from_string(path.read_text(encoding="utf-8"))
    return template.render(**variables).strip()


def render(name: str, **variables: Any) -> str:
    """Render template `name` (with or without the .j2 suffix); surrounding blank space is trimmed."""
    filename = name if name.endswith(".j2") else f"{name}.j2"
    return _environment().get_template(filename).render(**variables).strip()


def render_source(source: str, **variables: Any) -> str:
    """Render a template given as text (a user's, already checked), StrictUndefined; trimmed."""
    return _environment().from_string(source).render(**variables).strip()


def render_role(role: str, custom: str | None = None, **variables: Any) -> str:
    """A role's prompt: its body (the user's template `custom`, else the built-in one), then its answer format.

    The format part (`ROLE_format.j2`, from the output contract: `json_format` or the text lines) is rendered from
    the same variables and always comes from the project.
    """
    body = render_source(custom, **variables) if custom is not None else render(role, **variables)
    format_file = f"{role}_format.j2"
    if format_file not in _shipped_templates():
        return body
    return f"{body}\n{render(format_file, **variables)}"


def check_template(source: str, path: Path | str, role: str) -> None:
    """Raise PromptTemplateError (`FILE:LINE: problem`) for a syntax error or a variable the role does not have."""
    allowed = ROLE_VARIABLES[role]
    may_use = ", ".join(allowed) if allowed else "none"
    try:
        tree = _environment().parse(source)
    except jinja2.TemplateSyntaxError as error:
        raise PromptTemplateError(f"{path}:{error.lineno}: template syntax error: {error.message}") from None
    unknown = jinja2.meta.find_undeclared_variables(tree) - set(allowed)
    if unknown:
        first = min((node.lineno, node.name) for node in tree.find_all(jinja2.nodes.Name)
                    if node.name in unknown)
        raise PromptTemplateError(f"{path}:{first[0]}: unknown variable '{first[1]}' (the {role} prompt may use: "
                                  f"{may_use})")


class PromptTemplateError(ValueError):
    """A user's prompt template that cannot be used: its message is `FILE:LINE: problem`."""
