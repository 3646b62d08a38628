"""Reading `--config FILE.yaml`: a mapping of a command's option names to values, and a debate panel.

Keys are option names with dashes or underscores (`output-format` or `output_format`). A missing file, a
YAML syntax error, a top level that is not a mapping, an unknown key or a value of the wrong type stops
the command before any work with one line naming the file and the key. Paths inside the file (a role's
`prompt_file`) are relative to the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tools.errors import ConfigError

ROLE_KEY_PATTERN = r"^[a-z][a-z0-9_]*$"


class RoleEntry(BaseModel):
    """One referee of a debate panel in a config file: a built-in role by key, or a new role.

    A new role needs a `name` and its description, written out (`description`) or in a template file
    (`prompt_file`, relative to the config file). A built-in role may be given a `model` of its own.
    """

    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=ROLE_KEY_PATTERN, description="node name and role key: lower case, digits, _")
    name: str | None = Field(default=None, min_length=1, description="the name the other referees see")
    description: str | None = Field(default=None, min_length=1, description="the role's instructions")
    prompt_file: Path | None = Field(default=None, description="a file holding the role's instructions")
    model: str | None = Field(default=None, description="this referee's own model spec")

    @model_validator(mode="after")
    def _one_description(self) -> RoleEntry:
        if self.description is not None and self.prompt_file is not None:
            raise ValueError("give 'description' or 'prompt_file', not both")
        return self


def normalise_key(key: object) -> str:
    """`output-format` and `output_format` name the same option."""
    return str(key).strip().replace("-", "_")


def load_yaml_file(path: Path, flag: str = "--config") -> Any:
    """The YAML document of a file a flag names; one-line ConfigError naming the flag, file and line otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{flag} {path}: cannot read it ({type(error).__name__})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = str(getattr(error, "problem", None) or "not valid YAML")
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's top-level mapping with normalised keys; one-line ConfigError naming the file otherwise."""
    document = load_yaml_file(path)
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(document).__name__}")
    values: dict[str, Any] = {}
    for key, value in document.items():
        name = normalise_key(key)
        if name in values:
            raise ConfigError(f"{path}: key '{key}' is given twice (dashes and underscores name the same option)")
        values[name] = value
    return values


def validation_problem(
    error: ValidationError, source: str, key_names: dict[str, str] | None = None, *, prefix: str = ""
) -> ConfigError:
    """The first problem of a pydantic ValidationError as one line: `SOURCE: key 'debate_roles[3].name': ...`.

    `key_names` maps field names to the names users write (`input_path` -> `input`); `prefix` is where the
    validated value sits in the file.
    """
    first = error.errors()[0]
    location = list(first.get("loc", ()))
    parts: list[str] = [prefix] if prefix else []
    for part in location:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            name = (key_names or {}).get(str(part), str(part)) if not parts else str(part)
            parts.append(("." if parts else "") + name)
    key = "".join(parts)
    message = re.sub(r"^Value error, ", "", str(first.get("msg", "invalid value")))
    if first.get("type") == "extra_forbidden":
        return ConfigError(f"{source}: unknown key '{key}'")
    if first.get("type") == "missing":
        return ConfigError(f"{source}: '{key}' is required")
    return ConfigError(f"{source}: key '{key}': {message}")
