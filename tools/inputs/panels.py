"""Debate panels from configuration: a config file's `debate_roles` list, or the file `$FELLOWSHIP_CONFIG` names.

An entry is a built-in role's key (`critic`), or a mapping for a new role (`key`, `name`, and `description` or
a `prompt_file` relative to the config file) or for a built-in one with its own `model`. Every problem is one
line naming the file and the entry, raised before any work.
"""

from __future__ import annotations

import os
from pathlib import Path

import jinja2

from agents.roles import DEFAULT_ROLES, RESERVED_KEYS, RefereeRole
from tools.errors import ConfigError
from tools.inputs.config_files import RoleEntry, read_config_file, validation_problem

CONFIG_VARIABLE = "FELLOWSHIP_CONFIG"
BUILT_IN_ROLES = {role.key: role for role in DEFAULT_ROLES}


def _role_from_entry(entry: str | RoleEntry, base: Path, where: str) -> RefereeRole:
    if isinstance(entry, str):
        entry = RoleEntry(key=entry)
    built_in = BUILT_IN_ROLES.get(entry.key)
    has_description = entry.description is not None or entry.prompt_file is not None
    if built_in is not None and not has_description and entry.name is None:
        return RefereeRole(built_in.key, built_in.name, built_in.prompt, model=entry.model)
    if entry.name is None or not has_description:
        known = ", ".join(BUILT_IN_ROLES)
        raise ConfigError(f"{where}: '{entry.key}' is not a built-in role ({known}); a new role needs 'name' and "
                          "'description' or 'prompt_file'")
    prompt_path = None
    if entry.prompt_file is not None:
        prompt_path = entry.prompt_file if entry.prompt_file.is_absolute() else base / entry.prompt_file
        if not prompt_path.is_file():
            raise ConfigError(f"{where}.prompt_file: no file at {prompt_path}")
    role = RefereeRole(entry.key, entry.name, model=entry.model, text=entry.description, prompt_path=prompt_path)
    try:
        role.description  # noqa: B018 (render now: a broken template fails before any call)
    except jinja2.TemplateError as error:
        raise ConfigError(f"{where}.prompt_file: {prompt_path}: {error}") from None
    return role


def panel_from_entries(entries: object, *, source: Path) -> tuple[RefereeRole, ...]:
    """The debate panel a config file's `debate_roles` list describes, in speaking order.

    An entry is a built-in role's key, or a mapping (see `tools.inputs.config_files.RoleEntry`). Problems raise
    a one-line ConfigError naming the file and the entry.
    """
    from pydantic import ValidationError

    if not isinstance(entries, list):
        raise ConfigError(f"{source}: key 'debate_roles': a list of roles, got {type(entries).__name__}")
    parsed: list[str | RoleEntry] = []
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            parsed.append(entry)
        elif isinstance(entry, dict):
            try:
                parsed.append(RoleEntry.model_validate(entry))
            except ValidationError as error:
                raise validation_problem(error, str(source), prefix=f"debate_roles[{index}]") from None
        else:
            raise ConfigError(f"{source}: key 'debate_roles[{index}]': a role key or a mapping, got {entry!r}")
    if not parsed:
        raise ConfigError(f"{source}: key 'debate_roles': a panel needs at least one referee")
    base = source.parent
    roles = tuple(_role_from_entry(entry, base, f"{source}: key 'debate_roles[{index}]'")
                  for index, entry in enumerate(parsed))
    keys = [role.key for role in roles]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ConfigError(f"{source}: key 'debate_roles': role keys repeat ({', '.join(repeated)})")
    taken = sorted(RESERVED_KEYS & set(keys))
    if taken:
        raise ConfigError(f"{source}: key 'debate_roles': {', '.join(taken)} names a step of the debate graph")
    return roles


def configured_panel() -> tuple[RefereeRole, ...]:
    """The panel named by `$FELLOWSHIP_CONFIG` (a config file's `debate_roles`), else the default panel.

    Read where the module-level graphs of `langgraph.json` are built, so Studio shows a configured panel.
    """
    configured = os.environ.get(CONFIG_VARIABLE)
    if not configured:
        return DEFAULT_ROLES
    path = Path(configured)
    values = read_config_file(path)
    if "debate_roles" not in values:
        return DEFAULT_ROLES
    return panel_from_entries(values["debate_roles"], source=path)
