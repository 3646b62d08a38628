"""The run configuration of each command.

One pydantic model per command, shared by the CLI, `--config` files and the graphs' contexts.

A command's options are its model's fields (named as the command's parameters). Values come from the command
line, else from the `--config` file, else from the field's default, which is also what the command's
`--help` shows (the CLI takes its defaults from here). Validation forbids unknown keys; the context a graph
runs with is built from the validated options (`EvaluateOptions.context()` ...), so an option value lives in
one place. The debate panel (`debate_roles`) is set in a config file only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agents.call_budget import BATCH_CALLS_PER_JOB, batch_jobs_in_flight
from agents.models import DEFAULT_MODEL, BatchSettings, ModelSettings, Scoring
from agents.roles import DEFAULT_ROLES, RefereeRole
from graphs.context import EvaluationContext, GenerationContext
from graphs.ray_pool import RayStart, RayWorkers, preflight_ray_address
from tools.errors import ConfigError
from tools.inputs.config_files import load_yaml_file, read_config_file, validation_problem
from tools.inputs.panels import panel_from_entries
from tools.rules.criteria import Criterion
from tools.rules.disputes import DEFAULT_DISPUTE_MARGIN, ReviewMode, audit_share_for
from tools.rules.pairing import DEFAULT_DEGENERATE_SHARE, Pairing, PairingRules, TopTie

Method = Literal["judge", "jury", "debate"]
Strategy = Literal["direct", "independent", "combined"]
OutputFormat = Literal["auto", "text", "json"]


class CommandOptions(BaseModel):
    """Options every run command shares: the config file it read, and the debate panel it may set."""

    model_config = ConfigDict(extra="forbid")

    config: Path | None = Field(default=None, description="the --config file these options were read with")
    debate_roles: list[Any] | None = Field(
        default=None, description="the debate panel, in speaking order (built-in role keys or new roles)"
    )
    judge_prompt_file: Path | dict[Strategy, Path] | None = Field(
        default=None, description="the judge's request as a Jinja template (relative to the config file): one file "
        "for the run's strategy, or one per strategy (direct, independent, combined)")
    generator_system: str | None = Field(
        default=None, description="the generator's system prompt: the text, or a file relative to the config file")
    reviewer_prompt_file: Path | None = Field(
        default=None, description="the reviewer's request as a Jinja template (relative to the config file)")
    criteria: list[Criterion] | Path | None = Field(
        default=None, description="what the evaluators score, each on its own ({name, description, weight, rubric}), "
        "or a YAML file of them (--criteria)")

    def criteria_list(self) -> list[Criterion]:
        """The criteria: as given in the config file, or read from the `--criteria` file; [] without any.

        Refused with one line: a file that cannot be read, a bad entry (`FILE: criteria[N].key: problem`), two
        criteria of one name, or criteria with the direct strategy (it gives no scores to break down).
        """
        if self.criteria is None:
            return []
        if isinstance(self.criteria, Path):
            # `--criteria` names a file from the working directory, `criteria:` in a config file one beside it.
            path = self.criteria if self.criteria.exists() or self.config is None else self._relative(self.criteria)
            raw = load_yaml_file(path, "--criteria")
            entries = raw.get("criteria") if isinstance(raw, dict) else raw
            if not isinstance(entries, list) or not entries:
                raise ConfigError(f"--criteria {path}: expected a list of criteria (or 'criteria:' and a list)")
            criteria = []
            for index, entry in enumerate(entries):
                try:
                    criteria.append(Criterion.model_validate(entry))
                except ValidationError as error:
                    first = error.errors()[0]
                    where = "".join(f".{part}" for part in first["loc"])
                    raise ConfigError(f"{path}: criteria[{index}]{where}: {first['msg']}") from None
            source = str(path)
        else:
            criteria, source = list(self.criteria), str(self.config or "--config")
        names = [criterion.name for criterion in criteria]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: criteria: two criteria are named "
                              f"'{next(name for name in names if names.count(name) > 1)}'")
        method = getattr(self, "method", getattr(self, "evaluator", "judge"))
        strategy = getattr(self, "strategy", "combined")
        if method == "judge" and strategy == "direct":
            raise ConfigError("criteria: the direct strategy picks an answer without scores, so nothing is scored by "
                              "criterion; use --strategy combined or independent, a jury or a debate")
        return criteria

    def _relative(self, path: Path) -> Path:
        """A path named in the config file, relative to the file's folder."""
        return path if path.is_absolute() or self.config is None else self.config.parent / path

    def prompt_templates(self) -> dict[str, str]:
        """The user's prompt templates by role (`prompts.ROLE_VARIABLES`), read and checked; {} without any.

        A template with a syntax error or an unknown variable is refused here, before any call, with `FILE:LINE`.
        """
        import prompts

        strategy = getattr(self, "strategy", "combined")
        files: dict[str, Path] = {}
        if isinstance(self.judge_prompt_file, dict):
            files |= {f"judge_{name}": self._relative(path) for name, path in self.judge_prompt_file.items()}
        elif self.judge_prompt_file is not None:
            files[f"judge_{strategy}"] = self._relative(self.judge_prompt_file)
        if self.reviewer_prompt_file is not None:
            files["reviewer"] = self._relative(self.reviewer_prompt_file)
        if self.generator_system is not None:
            named = self._relative(Path(self.generator_system))
            if len(self.generator_system) < 4096 and "\n" not in self.generator_system and named.is_file():
                files["generator_system"] = named
        templates: dict[str, str] = {}
        where: dict[str, str] = {}
        for role, path in files.items():
            try:
                templates[role] = path.read_text(encoding="utf-8")
            except OSError as error:
                raise ConfigError(f"{self.config or '--config'}: {role} prompt file {path}: cannot be read "
                                  f"({error.strerror or error})") from None
            where[role] = str(path)
        if self.generator_system is not None and "generator_system" not in templates:
            templates["generator_system"] = self.generator_system  # the text itself
            where["generator_system"] = f"{self.config or '--config'} (generator_system)"
        for role, source in templates.items():
            try:
                prompts.check_template(source, where[role], role)
            except prompts.PromptTemplateError as error:
                raise ConfigError(str(error)) from None
        return templates

    def panel(self) -> tuple[RefereeRole, ...]:
        """The debate panel: the config file's `debate_roles`, else the default three referees."""
        if self.debate_roles is None:
            return DEFAULT_ROLES
        return panel_from_entries(self.debate_roles, source=self.config or Path("--config"))

    @field_validator("scale", mode="before", check_fields=False)
    @classmethod
    def _scale_as_number(cls, value: Any) -> Any:
        return int(value) if isinstance(value, str) and value.isdigit() else value

    @field_validator("model", "reviewer", "judge", mode="before", check_fields=False)
    @classmethod
    def _one_spec_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class RunOptions(CommandOptions):
    """Options of the commands that call models: where their work runs."""

    # Each command sets its own default (`generate` keeps more calls out than the evaluation commands).
    concurrency: int = Field(default=4, ge=1, description="model calls in flight at once")
    workers: int = Field(default=1, ge=1, le=1024, description="worker processes (more than 1: on Ray)")
    ray_address: str | None = Field(default=None, description="join this Ray cluster (default: $RAY_ADDRESS)")
    ray_start: RayStart = Field(default="when-busy", description="when a local Ray instance starts (one machine)")
    adaptive: bool = Field(default=True, description="pace and cap the calls to each endpoint to its rate limit")
    worker_timeout: float | None = Field(
        default=None, gt=0, description="seconds a Ray worker may hold work without finishing any before it counts as "
        "lost (default: 10x the slowest job so far, at least 60)")
    batch: bool = Field(default=False, description="send every model call through the providers' batch APIs (about "
                        "half the price; results within 24 hours)")
    batch_size: int | None = Field(default=None, ge=1, le=50_000, description="requests per batch (default: the "
                                   "provider's limit, 50,000 requests and 200 MB for OpenAI, 100 MB for Together)")
    batch_wait: float = Field(default=60.0, ge=0, description="seconds from a queue's first request until it is sent "
                              "as a batch, full or not")

    def batch_settings(self, directory: Path, specs: list[tuple[str, str]], *,
                       max_retries: int = 6) -> BatchSettings | None:
        """With `--batch`: where and how the run's calls go by batch; None without it.

        Refused with one line: `local:` models (they run in this process) and Ray workers (one process sends the
        batches of a run, so no request is sent twice); and a run without `--batch` in a directory whose earlier
        `--batch` run left batches out at the provider (their calls would be paid again).
        """
        if not self.batch:
            from agents.batch_store import unfinished_batches

            if out := unfinished_batches(directory):
                raise ConfigError(f"{directory}: {out} batches sent by an earlier --batch run are still out at the "
                                  "provider: run with --batch to collect them (without it their calls would be "
                                  f"made and paid again), or delete {directory / 'batches.sqlite'} to give them up")
            return None
        if self.on_ray():
            raise ConfigError("--batch: a batch run sends its requests from this process (the provider does the "
                              "work); drop --workers / --ray-address")
        for flag, spec in specs:
            if spec.startswith("local:"):
                raise ConfigError(f"--batch: {flag} {spec} runs in this process; batch APIs are for openai:, "
                                  "together: and compat: endpoints")
        return BatchSettings(directory=directory.resolve(), size=self.batch_size, wait_s=self.batch_wait,
                             max_retries=max_retries)

    def jobs_at_once(self) -> int | None:
        """With `--batch`: how many prompts (items) are under way at once; None: as `--concurrency` says."""
        return batch_jobs_in_flight(self.batch_size) if self.batch else None

    def calls_at_once(self) -> int:
        """How many model calls may be out at once: `--concurrency`, or with `--batch` more.

        By batch, calls wait for batches, not for slots: every call of the prompts (items) under way may be out
        (agents/call_budget.py).
        """
        jobs = self.jobs_at_once()
        return self.concurrency if jobs is None else BATCH_CALLS_PER_JOB * jobs

    def on_ray(self) -> bool:
        """Whether the work runs on Ray workers: more than one worker, or a cluster to join."""
        return self.workers > 1 or self.ray_address is not None

    def ray_workers(self, model_settings: ModelSettings) -> RayWorkers | None:
        """The Ray workers to run on, each loading its models with `model_settings`; None for this process.

        A cluster to join is connected to first: an unreachable one stops the command here, before any work.
        """
        if not self.on_ray():
            return None
        preflight_ray_address(self.ray_address)
        return RayWorkers(count=self.workers, address=self.ray_address, model_settings=model_settings,
                          start=self.ray_start, stall_s=self.worker_timeout)


class EvaluationOptions(RunOptions):
    """Options of the commands that run an evaluator (evaluate, meta-eval)."""

    method: Method = Field(default="judge", description="evaluation workflow")
    strategy: Strategy = Field(default="combined", description="judge prompting strategy")
    scale: Literal[5, 10, 100] = Field(default=10, description="score scale for scoring strategies")
    model: list[str] | None = Field(default=None, description="model specs (default: local:smollm2)")
    rounds: int = Field(default=2, ge=1, le=20, description="debate rounds")
    swap: bool = Field(default=False, description="judge both answer orders; disagreement becomes a tie")
    jury_rule: Literal["plurality", "mean"] = Field(default="plurality", description="jury aggregation rule")
    max_tokens: int = Field(default=512, ge=16, description="cap on tokens generated per call")
    output_format: OutputFormat = Field(default="auto", description="evaluator answer format")
    scoring: Scoring = Field(default="auto", description="scores as probability-weighted means or as written")
    trace: Path | None = Field(default=None, description="folder for each item's run tree as JSON")

    def models(self) -> list[str]:
        """The model specs, or the embedded model."""
        return list(self.model or [DEFAULT_MODEL])

    def context(self) -> EvaluationContext:
        """The evaluation graphs' context for these options."""
        return EvaluationContext(models=self.models(), strategy=self.strategy, scale=self.scale, swap=self.swap,
                                 jury_rule=self.jury_rule, rounds=self.rounds,
                                 prompt_templates=self.prompt_templates(), criteria=self.criteria_list())


class EvaluateOptions(EvaluationOptions):
    """`fellowship evaluate`."""

    input_path: Path = Field(description="PAIRS.jsonl: {id, prompt, responses}")
    output_path: Path = Field(description="VERDICTS.jsonl to write")


class MetaEvalOptions(EvaluationOptions):
    """`fellowship meta-eval` (a live run over a benchmark)."""

    benchmark: str = Field(description="benchmark short name or path")
    limit: int | None = Field(default=None, ge=1, description="only the first N items of the benchmark")
    output: Path | None = Field(default=None, description="report folder (default runs/meta-eval/BENCHMARK)")


class GenerateOptions(RunOptions):
    """`fellowship generate`."""

    prompts: str = Field(description="JSONL with a prompt field, alpaca_eval, mt_bench, or a saved dataset folder")
    output: Path = Field(description="output directory (holds progress; rerun resumes)")
    generator: str | None = Field(default=None, description="model spec that writes answers (default local:smollm2)")
    reviewer: list[str] | None = Field(default=None, description="reviewer model specs (default local:smollm2)")
    judge: list[str] | None = Field(default=None, description="evaluator model specs (default local:smollm2)")
    evaluator: Method = Field(default="judge", description="evaluation workflow")
    strategy: Strategy = Field(default="combined", description="judge prompting strategy")
    scale: Literal[5, 10, 100] = Field(default=10, description="score scale")
    swap: bool = Field(default=False, description="judge both orders (two answers only)")
    iterations: int = Field(default=3, ge=1, le=10, description="answers per prompt")
    stop_score: float | None = Field(default=None, ge=0, le=10, description="stop when every reviewer scores >= this")
    rounds: int = Field(default=2, ge=1, le=20, description="debate rounds (with --evaluator debate)")
    concurrency: int = Field(default=8, ge=1, description="model calls in flight at once, across all workers")
    limit: int | None = Field(default=None, ge=1, description="only the first N prompts")
    prompt_field: str | None = Field(default=None, description="field or column holding the prompt")
    retry_failed: bool = Field(default=False, description="retry prompts that failed in an earlier run")
    extend: bool = Field(default=False, description="add prompts from another source to the run in --output")
    max_tokens: int = Field(default=512, ge=16, description="cap on tokens generated per call")
    output_format: OutputFormat = Field(default="auto", description="evaluator answer format")
    scoring: Scoring = Field(default="auto", description="scores as probability-weighted means or as written")
    max_retries: int = Field(default=6, ge=0, le=20, description="retries of timeouts, 5xx and 429 per call")
    timeout: float = Field(default=120.0, ge=1, description="seconds before a call times out")
    trace: Path | None = Field(default=None, description="folder for each prompt's run tree as JSON")
    dry_run: bool = Field(default=False, description="estimate prompts, calls, tokens, cost and time; run nothing")
    cache: Path | None = Field(default=None, description="SQLite call cache shared across runs (or $FELLOWSHIP_CACHE)")
    push_to_hub: str | None = Field(default=None, description="publish the card and both configs to this Hub repo")
    private: bool = Field(default=False, description="with --push-to-hub: a private repository")
    license: str = Field(default="other", description="the licence named in the dataset card")
    price: list[str] | None = Field(default=None, description="SPEC=IN:OUT prices, USD per million tokens")
    max_cost_usd: float | None = Field(default=None, ge=0, description="the run's spending cap in USD")
    assumed_latency: float = Field(default=3.0, ge=0, description="seconds per call for the dry run's time")
    pairs: Pairing = Field(default="best-vs-rest", description="which DPO pairs a prompt gives")
    min_margin: float = Field(default=0.0, ge=0, description="least score gap between chosen and rejected")
    top_tie: TopTie = Field(default="later", description="a tied top: choose the later answer, or skip the prompt")
    max_repetition: float = Field(
        default=DEFAULT_DEGENERATE_SHARE, gt=0, le=1,
        description="share of repeated word 3-grams from which an answer is degenerate (never chosen)",
    )
    review: ReviewMode = Field(default="none", description="prompts that pause for a person: none, disputed, all")
    audit_share: float | None = Field(
        default=None, ge=0, le=1,
        description="share of prompts drawn by id for a blind review (default 0 with --review none, else 0.05)")
    dispute_margin: float = Field(
        default=DEFAULT_DISPUTE_MARGIN, ge=0, le=10,
        description="top two scores this close (10-point scale; scaled for 5 and 100) make a verdict disputed")

    def review_settings(self) -> dict[str, Any]:
        """The review entries of the settings a run directory is bound to (none without review: older runs resume).

        Which prompts pause depends on all three, so a directory keeps them, as it keeps its models.
        """
        context = self.context()
        if context.review == "none" and not context.audit_share:
            return {}
        return {"review": context.review, "audit_share": audit_share_for(context.review, context.audit_share),
                "dispute_margin": context.dispute_margin}

    def pairing_rules(self) -> PairingRules:
        """How the export turns ranked answers into rows (export options: not bound to the run directory)."""
        return PairingRules(pairs=self.pairs, min_margin=self.min_margin, top_tie=self.top_tie,
                            degenerate_share=self.max_repetition)

    def context(self) -> GenerationContext:
        """The pipeline's context for these options."""
        return GenerationContext(
            models=list(self.judge or [DEFAULT_MODEL]), strategy=self.strategy, scale=self.scale, swap=self.swap,
            rounds=self.rounds, generator=self.generator or DEFAULT_MODEL,
            reviewers=list(self.reviewer or [DEFAULT_MODEL]), iterations=self.iterations, stop_score=self.stop_score,
            evaluator=self.evaluator, review=self.review, audit_share=self.audit_share,
            prompt_templates=self.prompt_templates(), criteria=self.criteria_list(),
            dispute_margin=self.dispute_margin,
        )


RUN_COMMAND_OPTIONS: tuple[type[CommandOptions], ...] = (EvaluateOptions, MetaEvalOptions, GenerateOptions)


class GraphOptions(CommandOptions):
    """`fellowship graph`.

    It reads the same config files as the run commands and uses their debate panel; the other run options (models,
    rounds...) do not change a drawing, so they are accepted and left unused.
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="workflow to draw")
    output_format: Literal["mermaid", "ascii", "png"] | None = Field(default=None, description="drawing format")
    output: Path | None = Field(default=None, description="file to write")

    def check_keys(self) -> None:
        """Unknown keys are still refused: a key must be an option of some run command."""
        known = {name for options in RUN_COMMAND_OPTIONS for name in options.model_fields}
        for key in (self.model_extra or {}):
            if key not in known:
                raise ConfigError(f"{self.config}: unknown key '{key}'")


def scoring_setting(scoring: Scoring) -> dict[str, Scoring]:
    """The `scoring` entry of the settings a run directory or verdict cache is bound to.

    Left out for `parsed`, the scores of every run made before `--scoring` existed, so those runs resume with
    `--scoring parsed`, and refuse the new default rather than mix two kinds of score.
    """
    return {} if scoring == "parsed" else {"scoring": scoring}


def criteria_setting(criteria: list[Criterion]) -> dict[str, Any]:
    """The `criteria` entry of a run's settings (none without criteria: earlier runs resume as they were)."""
    return {"criteria": [criterion.model_dump() for criterion in criteria]} if criteria else {}


def prompts_setting(templates: dict[str, str]) -> dict[str, Any]:
    """The `prompts` entry of a run's settings: a hash of each of the user's templates (none without any).

    A run directory or verdict cache made with other prompts is then refused or not reused, as with other models.
    """
    import hashlib

    if not templates:
        return {}
    return {"prompts": {role: hashlib.sha256(source.encode()).hexdigest()[:16]
                        for role, source in sorted(templates.items())}}


def option_defaults(options: type[BaseModel]) -> dict[str, Any]:
    """The fields' defaults, for the CLI's parameter defaults (one source for both).

    The CLI offers the score scale as a choice of words, so its default is given as one.
    """
    defaults = {name: field.default for name, field in options.model_fields.items() if not field.is_required()}
    if "scale" in defaults:
        defaults["scale"] = str(defaults["scale"])
    return defaults


EVALUATE_DEFAULTS = option_defaults(EvaluateOptions)
META_EVAL_DEFAULTS = option_defaults(MetaEvalOptions)
GENERATE_DEFAULTS = option_defaults(GenerateOptions)


def _option_name(parameter: Any) -> str:
    """The name a parameter has on the command line and in config files (`--input` -> `input`)."""
    long_names = [name for name in getattr(parameter, "opts", []) if name.startswith("--")]
    return long_names[0].removeprefix("--").replace("-", "_") if long_names else str(parameter.name)


def resolve_options(context: Any, options: type[CommandOptions]) -> Any:
    """Validate a command's options: the command line wins, then the `--config` file, then the defaults.

    `context` is the command's click/typer context (its parsed parameters and where each value came from).
    One line naming the file and key (or the flag) for anything wrong, before any work.
    """
    parameters = dict(context.params)
    config_path: Path | None = parameters.pop("config", None)
    key_of = {parameter.name: _option_name(parameter) for parameter in context.command.params}
    parameter_of = {key: name for name, key in key_of.items()}
    from_file: dict[str, Any] = {}
    if config_path is not None:
        for key, value in read_config_file(config_path).items():
            name = parameter_of.get(key, key)
            if name == "config":
                raise ConfigError(f"{config_path}: key 'config': a config file cannot name another")
            from_file[name] = value
    merged: dict[str, Any] = {}
    for name, value in parameters.items():
        # Compared by name: typer ships its own copy of click, whose ParameterSource is not click's.
        source = getattr(context.get_parameter_source(name), "name", "DEFAULT")
        from_command_line = source not in ("DEFAULT", "DEFAULT_MAP")
        if from_command_line or name not in from_file:
            if value is not None:
                merged[name] = value
        else:
            merged[name] = from_file[name]
    merged.update({name: value for name, value in from_file.items() if name not in parameters})
    try:
        validated = options.model_validate({**merged, "config": config_path})
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else ""
        if first.get("type") == "missing":
            hint = f" (or '{key_of.get(name, name)}:' in the --config file)"
            raise ConfigError(f"--{key_of.get(name, name).replace('_', '-')} is required{hint}") from None
        raise validation_problem(error, str(config_path or "command line"), key_of) from None
    if isinstance(validated, GraphOptions):
        validated.check_keys()
    validated.panel()  # a broken panel stops the command here, before any work
    validated.prompt_templates()  # so does a broken prompt template
    validated.criteria_list()  # and criteria that cannot be used
    return validated
