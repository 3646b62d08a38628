"""`fellowship rank`: Bradley-Terry ratings of K generation set-ups from pairwise judge verdicts.

Each side is a `generate` output folder or a file of prompts and answers (as `winrate` reads them). The judge
compares the sides' answers on the prompts every side answered: every pair of sides, or each side against
`--baseline` only (K-1 battles per prompt, as arena-hard-auto does, to save calls). Battles are named by what
they compare (the prompt and the two answers, in the order shown), so the verdict file in the output folder is a
cache: a rerun with one more side, with a baseline, or after an interruption, pays only for battles not judged
yet.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from tools.cli.common import (
    AdaptiveOption,
    BatchOption,
    BatchSizeOption,
    BatchWaitOption,
    ConcurrencyOption,
    CriteriaOption,
    MaxTokensOption,
    OutputFormatOption,
    RayAddressOption,
    RayStartOption,
    ScoringOption,
    TraceOption,
    WorkersOption,
    WorkerTimeoutOption,
    announce_models,
    check_evaluation_flags,
    console,
    exit_if_failed,
    run_evaluation,
)
from tools.cli.meta import ScaleOption, StrategyOption, _table, pairwise_judging, settings_digest
from tools.cli.options import META_EVAL_DEFAULTS
from tools.errors import ConfigError
from tools.inputs.answer_sets import Side, load_side

# Bootstrap rounds over prompts for the ratings' intervals (arena-hard-auto uses 100).
DEFAULT_ROUNDS = 100

SideOption = Annotated[list[str], typer.Option(
    "--side", help="NAME=PATH: a generate output folder or a prompt/answer JSON(L) file; give two or more")]


def parse_sides(entries: list[str]) -> list[tuple[str, Path]]:
    """`NAME=PATH` entries as (name, path); a malformed or repeated name stops here with one line."""
    sides: list[tuple[str, Path]] = []
    for entry in entries:
        name, separator, path = entry.partition("=")
        if not separator or not name.strip() or not path.strip():
            raise ConfigError(f"--side {entry!r}: expected NAME=PATH")
        if any(name == known for known, _ in sides):
            raise ConfigError(f"--side {entry!r}: the name {name!r} is given twice")
        sides.append((name.strip(), Path(path.strip())))
    if len(sides) < 2:
        raise ConfigError("--side: give at least two sides to rank")
    return sides


def battle_id(prompt_key: str, first: str, second: str) -> str:
    """A battle's name: what it compares, so the same two answers on the same prompt are judged once."""
    material = json.dumps([prompt_key, first, second], ensure_ascii=False)
    return "battle-" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:20]


def pairings(names: list[str], baseline: str | None) -> list[tuple[str, str]]:
    """The pairs of sides that battle: every pair, or each side against the baseline."""
    if baseline is None:
        return list(itertools.combinations(names, 2))
    return [(name, baseline) for name in names if name != baseline]


def shown_first(first: str, second: str) -> bool:
    """Whether the answer `first` is shown first in its battle.

    The order follows the answers' text (the one whose hash is lower goes first), not the sides' names or their
    place on the command line: a battle is then the same whatever the pairing mode or the order of `--side`, so
    its verdict is reused, and each side is shown first in about half its battles, which spreads a judge's
    position bias evenly.
    """
    return hashlib.sha256(first.encode("utf-8")).digest() <= hashlib.sha256(second.encode("utf-8")).digest()


def _winner(record: dict[str, Any]) -> str | None:
    """A battle's verdict: A (the first side), B, tie, or None when its calls failed or it could not be read."""
    return None if record.get("error") else record.get("winner")


def rank_command(
    side: SideOption,
    baseline: Annotated[str | None, typer.Option(help="compare each side with this one only (K-1 battles per "
                                                 "prompt); its rating is 1000")] = None,
    judge: Annotated[str, typer.Option(help="judge model spec")] = "local:smollm2",
    swap: Annotated[bool, typer.Option(help="judge both orders; disagreement becomes a tie")] = False,
    answer: Annotated[
        Literal["final", "best", "first"],
        typer.Option(help="which answer of a generate output speaks for it: the loop's final answer, the "
                     "evaluator's pick, or the first draft"),
    ] = "final",
    strategy: StrategyOption = "combined",
    scale: ScaleOption = "10",
    rounds: Annotated[int, typer.Option(min=1, max=10_000, help="bootstrap rounds over prompts for the intervals")]
    = DEFAULT_ROUNDS,
    style_control: Annotated[bool, typer.Option(help="control for answer length: its coefficient is reported and "
                                                "the ratings are what remains")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N prompts every side answered")] = None,
    concurrency: ConcurrencyOption = 4,
    workers: WorkersOption = 1,
    ray_address: RayAddressOption = None,
    ray_start: RayStartOption = META_EVAL_DEFAULTS["ray_start"],
    worker_timeout: WorkerTimeoutOption = None,
    adaptive: AdaptiveOption = META_EVAL_DEFAULTS["adaptive"],
    batch: BatchOption = False,
    batch_size: BatchSizeOption = None,
    batch_wait: BatchWaitOption = 60.0,
    max_tokens: MaxTokensOption = 512,
    output_format: OutputFormatOption = "auto",
    scoring: ScoringOption = "auto",
    output: Annotated[Path, typer.Option("--output", "-o", help="report folder; its battle verdicts are reused by "
                                         "later runs")] = Path("runs/rank"),
    trace: TraceOption = None,
    criteria: CriteriaOption = None,
) -> None:
    """Rate K generation set-ups (Bradley-Terry, with intervals) from judged battles on their shared prompts."""
    from tools.inputs.items import EvalItem
    from tools.meta_eval.ratings import Battle, rate
    from tools.meta_eval.reports import RANK_COLUMNS, markdown_table, rank_table_rows, rating_chart, write_report

    named = parse_sides(side)
    names = [name for name, _ in named]
    if baseline is not None and baseline not in names:
        raise ConfigError(f"--baseline {baseline!r}: not one of the sides ({', '.join(names)})")
    check_evaluation_flags([], method="judge", strategy=strategy, models=[judge], swap=swap, source="", flag="--judge")
    loaded: dict[str, Side] = {name: load_side(path, answer) for name, path in named}
    # In the first side's order, so that --limit takes the first prompts of its file.
    shared = [key for key in loaded[names[0]].answers if all(key in loaded[name].answers for name in names[1:])]
    shared = shared[:limit]
    if not shared:
        raise ConfigError("--side: no prompt has an answer from every side")
    announce_models([("judge", judge, "--judge")])
    pairs = pairings(names, baseline)
    planned: list[tuple[str, str, str, EvalItem]] = []
    for one, other in pairs:
        for key in shared:
            prompt, one_answer = loaded[one].answers[key]
            other_answer = loaded[other].answers[key][1]
            first, second = (one, other) if shown_first(one_answer, other_answer) else (other, one)
            answers = [loaded[first].answers[key][1], loaded[second].answers[key][1]]
            planned.append((first, second, key, EvalItem(id=battle_id(key, *answers), prompt=prompt,
                                                          responses=answers)))
    unique = list({item.id: item for _, _, _, item in planned}.values())
    settings, options = pairwise_judging(
        judge=judge, strategy=strategy, scale=scale, swap=swap, concurrency=concurrency, workers=workers,
        ray_address=ray_address, ray_start=ray_start, worker_timeout=worker_timeout, adaptive=adaptive,
        max_tokens=max_tokens, output_format=output_format, scoring=scoring, trace=trace, criteria=criteria,
        batch=batch, batch_size=batch_size, batch_wait=batch_wait)
    console.print(f"{len(names)} sides, {len(shared)} prompts every side answered, {len(pairs)} pairings: "
                  f"{len(unique)} battles", markup=False, highlight=False)
    records = run_evaluation(items=unique, output_path=output / f"battles-{settings_digest(settings)}.jsonl",
                             options=options, reuse_output=True)
    by_id = {str(record["id"]): record for record in records}
    battles = [
        Battle(first=first, second=second, winner=_winner(by_id[str(item.id)]), prompt=key,
               first_length=len(item.responses[0]), second_length=len(item.responses[1]))
        for first, second, key, item in planned
    ]
    ratings = rate(battles, baseline=baseline, style=style_control, rounds=rounds)
    title = f"{len(names)} sides on {len(shared)} prompts, judged by {judge}"
    table_rows = rank_table_rows(ratings)
    console.print(_table(title, RANK_COLUMNS, table_rows))
    style_line = ""
    if ratings.style_coefficient is not None:
        style_line = (f"length (style) coefficient: {ratings.style_coefficient:+.0f} Elo points at the largest length "
                      f"difference (one answer all of the two's length) [{ratings.style_low:+.0f}, "
                      f"{ratings.style_high:+.0f}]")
        console.print(style_line, markup=False, highlight=False)
    if ratings.unread:
        console.print(f"{ratings.unread} battles without a readable verdict are left out", markup=False)
    output.mkdir(parents=True, exist_ok=True)
    chart = rating_chart(ratings, output / "ratings.png", title)
    anchor = f"{baseline} is at 1000" if baseline else "the mean of the sides is at 1000"
    report = write_report(output / "report.md", title, [
        ("Ratings", markdown_table(RANK_COLUMNS, table_rows) + "\n\n![ratings](ratings.png)"
         + (f"\n\n{style_line}" if style_line else "")),
        ("How to read this", "Bradley-Terry ratings from a logistic regression without intercept on every judged "
         f"battle (a tie counts half a win for each side), on the Elo scale: {anchor}, and 400 points mean 10:1 "
         f"odds. The interval is the 2.5-97.5 percentile range over {rounds} bootstrap resamples of prompts. "
         + ("Each side is compared with the baseline only. " if baseline else "Every pair of sides is compared. ")
         + "With --style-control, the normalised length difference of each battle's two answers is a covariate: "
         "the ratings are then what remains once length is accounted for. Answer used for generate outputs: "
         f"{answer}."),
    ])
    (output / "ratings.json").write_text(json.dumps(
        {**asdict(ratings), "settings": {**settings, "baseline": baseline, "style_control": style_control,
                                         "answer": answer, "prompts": len(shared),
                                         "sides": {name: str(path) for name, path in named}}},
        indent=2), encoding="utf-8")
    console.print(f"wrote {report}, {chart} and {output / 'ratings.json'}")
    exit_if_failed(sum(bool(record.get("error")) for record in records), len(records), "battles",
                   "their calls failed (left out above); run the same command again to retry them")
