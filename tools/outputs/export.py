"""From canonical per-prompt records to TRL preference datasets (DPO and KTO) and a dataset card.

TRL's conversational format with an explicit prompt: `prompt` is a list of messages ending with the
user turn; `chosen`, `rejected` and `completion` each hold one assistant message; `label` is a bool.
A prompt whose top answers tie, whose evaluator gave no verdict, or whose answers are identical yields
no row with chosen equal to rejected: such prompts are counted, not exported as noise.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.outputs.jsonl import write_jsonl_atomic
from tools.rules.verdicts import TIE, label_index


@dataclass
class ExportSummary:
    """Counts of an export: prompts, rows, and prompts per outcome."""
    prompts: int = 0
    dpo_rows: int = 0
    kto_rows: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def best_answer_index(record: dict[str, Any]) -> tuple[int | None, str]:
    """Index of the evaluator's best answer, or None with the reason there is none."""
    verdict = record.get("verdict") or {}
    winner = verdict.get("winner")
    if winner is None:
        return None, "no_verdict"
    if winner == TIE:
        return None, "tied_top"
    return label_index(winner), "ok"


def preference_rows(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """DPO rows (N-1: best against each other answer) and KTO rows (N: best True, others False)."""
    answers = [answer["text"] for answer in record["answers"]]
    if len(answers) < 2:
        return [], [], "single_answer"  # --iterations 1: a baseline for winrate, nothing to prefer
    best, outcome = best_answer_index(record)
    if best is None:
        return [], [], outcome
    scores = (record.get("verdict") or {}).get("scores") or [None] * len(answers)
    common = {
        "prompt_id": record["prompt_id"],
        "generator": record["models"]["generator"],
        "evaluator": record["models"]["evaluator"],
    }
    chosen_text = answers[best]
    dpo: list[dict[str, Any]] = []
    kto: list[dict[str, Any]] = [
        {"prompt": record["prompt"], "completion": _assistant(chosen_text), "label": True,
         "score": scores[best], "iteration": best + 1, **common}
    ]
    for index, text in enumerate(answers):
        if index == best or text.strip() == chosen_text.strip():
            continue  # an identical text would teach the model nothing but noise
        dpo.append({
            "prompt": record["prompt"],
            "chosen": _assistant(chosen_text),
            "rejected": _assistant(text),
            "score_chosen": scores[best],
            "score_rejected": scores[index],
            "chosen_iteration": best + 1,
            "rejected_iteration": index + 1,
            **common,
        })
        kto.append({"prompt": record["prompt"], "completion": _assistant(text), "label": False,
                    "score": scores[index], "iteration": index + 1, **common})
    if not dpo:
        return [], [], "identical_answers"
    return dpo, kto, outcome


def check_trl_rows(rows: Iterable[dict[str, Any]], kind: str) -> None:
    """Raise ValueError if a row breaks TRL's conversational preference format."""
    for number, row in enumerate(rows):
        prompt = row["prompt"]
        if not (isinstance(prompt, list) and prompt and prompt[-1]["role"] == "user"):
            raise ValueError(f"{kind} row {number}: prompt must be messages ending with a user turn")
        completions = ["chosen", "rejected"] if kind == "dpo" else ["completion"]
        for column in completions:
            value = row[column]
            if not (isinstance(value, list) and len(value) == 1 and value[0]["role"] == "assistant"):
                raise ValueError(f"{kind} row {number}: {column} must be one assistant message")
        if kind == "dpo" and row["chosen"][0]["content"] == row["rejected"][0]["content"]:
            raise ValueError(f"dpo row {number}: chosen equals rejected")
        if kind == "kto" and not isinstance(row["label"], bool):
            raise ValueError(f"kto row {number}: label must be a bool")


def _empty_dataset(kind: str) -> Any:
    """A dataset with no rows but TRL's columns, so a run without preference pairs still loads and trains as 0 rows."""
    import datasets

    messages = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    columns: dict[str, Any] = {"prompt": messages, "prompt_id": datasets.Value("string")}
    if kind == "dpo":
        columns |= {"chosen": messages, "rejected": messages}
    else:
        columns |= {"completion": messages, "label": datasets.Value("bool")}
    return datasets.Dataset.from_dict({name: [] for name in columns}, features=datasets.Features(columns))


def _save_dataset(rows: list[dict[str, Any]], target: Path, kind: str) -> None:
    import datasets

    datasets.disable_progress_bars()  # the CLI has its own progress display
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    if rows:
        datasets.Dataset.from_list(rows).save_to_disk(str(staging))
    else:
        # datasets 5.2 writes no shard for zero rows unless told to, and then cannot load what it wrote.
        _empty_dataset(kind).save_to_disk(str(staging), num_shards=1)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def export_records(records: list[dict[str, Any]], output_dir: Path) -> tuple[ExportSummary, list[dict], list[dict]]:
    """Write records.jsonl, dpo.jsonl, kto.jsonl and the `dpo/`, `kto/` datasets; return the counts."""
    summary = ExportSummary(prompts=len(records))
    dpo_rows: list[dict[str, Any]] = []
    kto_rows: list[dict[str, Any]] = []
    for record in records:
        dpo, kto, outcome = preference_rows(record)
        summary.outcomes[outcome] += 1
        dpo_rows.extend(dpo)
        kto_rows.extend(kto)
    check_trl_rows(dpo_rows, "dpo")
    check_trl_rows(kto_rows, "kto")
    summary.dpo_rows, summary.kto_rows = len(dpo_rows), len(kto_rows)
    write_jsonl_atomic(output_dir / "records.jsonl", records)
    write_jsonl_atomic(output_dir / "dpo.jsonl", dpo_rows)
    write_jsonl_atomic(output_dir / "kto.jsonl", kto_rows)
    # Saved even when empty: a stale dataset from an earlier export must not survive, and loaders expect one.
    _save_dataset(dpo_rows, output_dir / "dpo", "dpo")
    _save_dataset(kto_rows, output_dir / "kto", "kto")
    return summary, dpo_rows, kto_rows


def dataset_card(
    *,
    settings: dict[str, Any],
    summary: ExportSummary,
    failures: list[tuple[str, str]],
    usage: dict[str, Any],
    prompt_sources: Sequence[Any] = (),
) -> str:
    """The README.md of an output directory: prompt sources, configuration, models, counts, failures, tokens.

    `prompt_sources` are the run store's PromptSourceId entries (origin, field, prompt count, content hash).
    """
    lines = [
        "---",
        "tags: [dpo, kto, synthetic, preference, fellowship]",
        "---",
        "# Preference dataset generated by fellowship",
        "",
        "LLM Feedback Loop answers ranked by an LLM evaluator (Arif et al. 2024, \"The Fellowship of the LLMs\").",
        "",
        "## Prompts",
        "",
        *[f"- `{source.origin}`, field `{source.field}`: {source.prompts} prompts, sha256 `{source.sha256}`"
          for source in prompt_sources],
        "",
        "## Configuration",
        "",
        *[f"- **{key}**: `{value}`" for key, value in sorted(settings.items())],
        "",
        "## Counts",
        "",
        f"- prompts exported: {summary.prompts}",
        f"- DPO rows (`dpo/`, `dpo.jsonl`): {summary.dpo_rows}",
        f"- KTO rows (`kto/`, `kto.jsonl`): {summary.kto_rows}",
        *[f"- prompts with outcome `{name}`: {count}" for name, count in sorted(summary.outcomes.items())],
        f"- prompts failed: {len(failures)}",
        "",
        "Prompts whose top answers tied (`tied_top`), that got no verdict (`no_verdict`) or whose answers",
        "were identical (`identical_answers`) give no rows, nor does a run with one answer per prompt",
        "(`single_answer`).",
        "",
        "## Tokens",
        "",
        f"- input tokens: {usage.get('input_tokens', 0)}",
        f"- output tokens: {usage.get('output_tokens', 0)}",
        f"- model calls: {usage.get('calls', 0)}",
    ]
    if usage.get("cost_usd") is not None:
        lines.append(f"- estimated cost: ${usage['cost_usd']:.4f}")
    if failures:
        lines += ["", "## Failures", "", *[f"- `{prompt_id}`: {reason}" for prompt_id, reason in failures]]
    lines += [
        "",
        "## Format",
        "",
        "TRL conversational format with an explicit prompt. DPO: `prompt`, `chosen`, `rejected`; KTO: `prompt`,",
        "`completion`, `label`. Extra columns: `prompt_id`, scores, iterations, model names.",
        "`records.jsonl` holds every answer, review, verdict and raw model text per prompt.",
    ]
    return "\n".join(lines) + "\n"
