"""`fellowship prompts show ROLE [--config FILE]`: the messages a role will be sent, before anything is paid for.

They are rendered with a sample item through the same functions the calls use (`prompts.render_role` and the
agents' message builders), with the config file's own templates, strategy, scale and answer format, so what is
printed is what the model will read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from tools.cli.common import ConfigOption, console, user_errors

SAMPLE_QUESTION = "How can I keep basil fresh for a week?"
SAMPLE_ANSWERS = (
    "Trim the stems and keep the basil in a glass of water on the counter, loosely covered with a bag.",
    "Put it in the fridge.",
    "Wrap the leaves in a dry paper towel and keep them in a box in the warmest part of the fridge.",
)
Role = Literal["generator", "reviewer", "judge"]

prompts_app = typer.Typer(help="See the prompts each role is sent, with your configuration.", no_args_is_help=True)


def role_messages(role: Role, options: Any) -> list[tuple[str, str]]:
    """(speaker, text) of each message the role is sent for the sample item, under these GenerateOptions."""
    import prompts
    from agents.judge import criteria_variables
    from agents.models import DEFAULT_MODEL, ModelRegistry, ModelSettings
    from agents.writers import opening_messages
    from tools.rules.contracts import DirectComparison, combined_scores, format_hint, independent_score, review_contract
    from tools.rules.criteria import criterion_keys
    from tools.rules.verdicts import candidate_labels

    context = options.context()
    templates, criteria = context.prompt_templates, context.criteria
    names = [criterion.name for criterion in criteria]
    by_criterion: dict[str, Any] = {"criterion_names": names} if criteria else {}
    registry = ModelRegistry(ModelSettings(output_format=options.output_format))
    if role == "generator":
        return [(message.type, str(message.content)) for message in
                opening_messages(SAMPLE_QUESTION, templates.get("generator_system"))]
    if role == "reviewer":
        contract = review_contract(tuple(names))
        json_format = format_hint(contract) if registry.json_mode(context.reviewers[0]) else None
        return [("system", prompts.render("reviewer_system", **criteria_variables(criteria))),
                ("human", prompts.render_role("reviewer", templates.get("reviewer"), question=SAMPLE_QUESTION,
                                              answer=SAMPLE_ANSWERS[0], json_format=json_format, **by_criterion))]
    json_mode = registry.json_mode((context.models or [DEFAULT_MODEL])[0])
    strategy, scale = context.strategy, context.scale
    answers = list(SAMPLE_ANSWERS[:2] if strategy == "direct" else SAMPLE_ANSWERS[:context.iterations])
    template = templates.get(f"judge_{strategy}")
    if strategy == "direct":
        hint = format_hint(DirectComparison) if json_mode else None
        text = prompts.render_role("judge_direct", template, question=SAMPLE_QUESTION, answer_a=answers[0],
                                   answer_b=answers[1], json_format=hint)
    elif strategy == "independent":
        hint = format_hint(independent_score(scale, tuple(names))) if json_mode else None
        text = prompts.render_role("judge_independent", template, question=SAMPLE_QUESTION, answer=answers[0],
                                   scale=scale, json_format=hint, **by_criterion)
    else:
        labels = candidate_labels(len(answers))
        keys = criterion_keys(labels, criteria) if criteria else labels
        text = prompts.render_role(
            "judge_combined", template, question=SAMPLE_QUESTION, scale=scale,
            answers=[{"label": label, "text": answer} for label, answer in zip(labels, answers, strict=True)],
            json_format=format_hint(combined_scores(tuple(keys), scale)) if json_mode else None,
            **({"score_keys": keys} if criteria else {}))
    return [("system", prompts.render("judge_system", **criteria_variables(criteria))), ("human", text)]


@prompts_app.command("show")
@user_errors
def show_command(
    role: Annotated[Role, typer.Argument(help="generator, reviewer or judge (the configured strategy)")],
    config: ConfigOption = None,
) -> None:
    """Print the messages ROLE will be sent, rendered with a sample item and your configuration."""
    from pydantic import ValidationError

    from tools.cli.options import GenerateOptions
    from tools.inputs.config_files import read_config_file, validation_problem

    values: dict[str, Any] = {"prompts": "-", "output": Path("-")}
    if config is not None:
        values |= {key.replace("-", "_"): value for key, value in read_config_file(config).items()}
    try:
        options = GenerateOptions.model_validate({**values, "config": config})
    except ValidationError as error:
        raise validation_problem(error, str(config), {}) from None
    messages = role_messages(role, options)  # a template that cannot be used stops here, before anything is printed
    shown = "the configured" if config is not None else "the default"
    strategy = f" ({options.strategy} strategy)" if role == "judge" else ""
    console.print(f"# {role}{strategy}: {shown} prompt, with a sample item", markup=False)
    for speaker, text in messages:
        console.print(f"--- {speaker} ---", markup=False)
        console.print(text, markup=False, highlight=False, soft_wrap=True)
