"""Debate referee roles: the role registry, as data (no model code, so options and configs load it cheaply).

A role is a key, a display name, its description (a template of the `prompts` package, a file of the user's,
or the text itself), and optionally its own model. The debate graph builds one node per role of the panel it
is given. A panel comes from Python (`DEFAULT_ROLES` plus new `RefereeRole`s) or from a config file's
`debate_roles` list (`tools.inputs.panels`), with no Python at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import prompts

# Node names of the debate graph that a role key may not take.
RESERVED_KEYS = frozenset({"open_debate", "close_round", "final_score", "aggregate_scores"})


@dataclass(frozen=True)
class RefereeRole:
    """One referee persona.

    Its description is a template of the `prompts` package (`prompt`), a template file of the user's (`prompt_path`)
    or the text itself (`text`); `model` overrides the debate's model.
    """

    key: str
    name: str
    prompt: str | None = None
    model: str | None = None
    text: str | None = None
    prompt_path: Path | None = None

    @property
    def description(self) -> str:
        """The role's instructions, as the referee reads them."""
        if self.text is not None:
            return self.text.strip()
        if self.prompt_path is not None:
            return prompts.render_file(self.prompt_path)
        if self.prompt is None:
            raise ValueError(f"referee role {self.key!r} has no description")
        return prompts.render(self.prompt)


DEFAULT_ROLES: tuple[RefereeRole, ...] = (
    RefereeRole("general_public", "General Public", "debate_role_general_public"),
    RefereeRole("psychologist", "Psychologist", "debate_role_psychologist"),
    RefereeRole("critic", "Critic", "debate_role_critic"),
)
