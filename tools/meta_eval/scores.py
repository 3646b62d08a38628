"""Meta-evaluation: how far an evaluator agrees with humans, its biases, and which jury agrees best.

Everything here works on verdicts already made (live or read from files), so scoring never calls a
model. Definitions, stated once:

- kappa, agreement, bootstrap interval: `tools.rules.metrics` (every item kept; unparsed counts as a tie);
- unparsed rate: share of items whose verdict the rules could not read (with the paper's rules too, which
  fill in -1 scores or a tie for them);
- position consistency: over items judged in both answer orders with both orders parsed, the share
  whose two verdicts agree;
- P(first): over every decisive verdict (not a tie, not unparsed) of every order judged, the share that
  picked the answer shown first;
- P(longer): over decisive verdicts on items whose two answers differ in length (characters), the share
  that picked the longer answer.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tools.errors import ConfigError, InputError
from tools.inputs.benchmarks import LabelledItem
from tools.inputs.verdict_files import ItemVerdict, VerdictFile
from tools.rules.metrics import CLASSES, agreement_with_humans, filled_predictions, kappa, kappas_of_resamples
from tools.rules.verdicts import TIE, candidate_label, mean_scores, plurality_verdict, winner_from_scores

BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class EvaluatorScore:
    """One row of the kappa table."""

    name: str
    n: int
    kappa: float
    kappa_low: float
    kappa_high: float
    agreement: float
    unparsed_rate: float
    position_consistency: float | None
    p_first: float | None
    p_longer: float | None
    baseline: bool = False
    # With several evaluators on one benchmark: this one's kappa minus the best evaluator's, on the items both
    # have, with a paired bootstrap interval (`differences_from_best`); None for the best itself.
    vs_best: float | None = None
    vs_best_low: float | None = None
    vs_best_high: float | None = None


@dataclass(frozen=True)
class JuryScore:
    """One row of the jury ranking.

    For a jury of two or more: its kappa minus its best member's (the member with the highest kappa alone), with a
    paired bootstrap interval, and whether that interval lies above 0. `tied_with_first`: whether the paired
    interval of the first jury's kappa minus this one's includes 0 (the first itself included).
    """
    members: tuple[str, ...]
    n: int
    kappa: float
    kappa_low: float
    kappa_high: float
    agreement: float
    best_member: str | None = None
    vs_best_member: float | None = None
    vs_best_member_low: float | None = None
    vs_best_member_high: float | None = None
    tied_with_first: bool | None = None

    @property
    def beats_best_member(self) -> bool | None:
        """Whether the jury agrees with people better than its best member: the paired interval is above 0."""
        return None if self.vs_best_member_low is None else self.vs_best_member_low > 0


def paired_interval(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of `first - second`, two sets of kappas over the same bootstrap resamples."""
    low, high = np.percentile(first - second, [2.5, 97.5])
    return float(low), float(high)


def align(verdicts: VerdictFile, items: Sequence[LabelledItem]) -> list[tuple[LabelledItem, ItemVerdict]]:
    """Pair each verdict with its benchmark item, in benchmark order; an unknown id is an error.

    Except in a run's records.jsonl, which holds every prompt of the run, scored against the few people decided.
    """
    known = {item.id: item for item in items}
    for item_id in verdicts.by_id:
        if item_id not in known and not verdicts.run_records:
            raise InputError(verdicts.path, verdicts.lines[item_id], f"id {item_id!r} is not in the benchmark")
    for position in verdicts.by_position:
        if position >= len(items):
            raise InputError(verdicts.path, None, f"{len(verdicts.by_id) + len(verdicts.by_position)} lines without "
                             f"id, but the benchmark has {len(items)} items")
    pairs = []
    for position, item in enumerate(items):
        verdict = verdicts.by_id.get(item.id) or verdicts.by_position.get(position)
        if verdict is not None:
            pairs.append((item, verdict))
    return pairs


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def bias_figures(pairs: Sequence[tuple[LabelledItem, ItemVerdict]]) -> tuple[float | None, float | None, float | None]:
    """(position consistency, P(first), P(longer)) as defined in the module docstring."""
    both = [verdict.order_winners for _, verdict in pairs
            if len(verdict.order_winners) == 2 and None not in verdict.order_winners]
    consistency = _share(sum(first == second for first, second in both), len(both))
    first_hits = first_total = 0
    longer_hits = longer_total = 0
    for item, verdict in pairs:
        # In original labels the first answer shown is A in the forward order and B in the reversed one.
        shown_first = ["A", "B"] if len(verdict.order_winners) == 2 else ["A"]
        winners = verdict.order_winners if len(verdict.order_winners) == 2 else [verdict.winner]
        for winner, first_label in zip(winners, shown_first, strict=True):
            if winner in ("A", "B"):
                first_total += 1
                first_hits += winner == first_label
        lengths = [len(response) for response in item.responses[:2]]
        if verdict.winner in ("A", "B") and len(item.responses) == 2 and lengths[0] != lengths[1]:
            longer_total += 1
            longer_hits += verdict.winner == ("A" if lengths[0] > lengths[1] else "B")
    return consistency, _share(first_hits, first_total), _share(longer_hits, longer_total)


def score_evaluator(name: str, pairs: Sequence[tuple[LabelledItem, ItemVerdict]], *, seed: int = 0) -> EvaluatorScore:
    """Agreement with the humans and the bias figures of one evaluator's verdicts."""
    if not pairs:
        raise ConfigError(f"{name}: no verdict matches an item of the benchmark")
    predicted = [verdict.winner for _, verdict in pairs]
    result = agreement_with_humans(predicted, [item.label for item, _ in pairs],
                                   resamples=BOOTSTRAP_RESAMPLES, seed=seed)
    consistency, p_first, p_longer = bias_figures(pairs)
    return EvaluatorScore(
        name=name, n=result.n, kappa=result.kappa, kappa_low=result.kappa_low, kappa_high=result.kappa_high,
        agreement=result.agreement,
        unparsed_rate=sum(verdict.winner is None or verdict.unparsed for _, verdict in pairs) / len(pairs),
        position_consistency=consistency, p_first=p_first, p_longer=p_longer,
    )


SAMPLE_ORDER = ("audit", "disputed", "all")


def rows_by_sample(
    scored: Sequence[tuple[EvaluatorScore, Sequence[tuple[LabelledItem, ItemVerdict]]]], *, seed: int = 0,
) -> list[EvaluatorScore]:
    """Each evaluator's figures on each sample of a run's `human.jsonl` apart (`audit`, `disputed`, `all`).

    The audit sample is drawn at random: its kappa is the unbiased estimate for the run's prompts. The disputed
    sample holds the prompts the evaluators could not agree on, hard by construction, so it understates agreement.
    No rows for benchmarks without samples (the public ones).
    """
    rows = []
    for score, pairs in scored:
        present = {item.sample for item, _ in pairs if item.sample}
        for sample in [*SAMPLE_ORDER, *sorted(present - set(SAMPLE_ORDER))]:
            mine = [(item, verdict) for item, verdict in pairs if item.sample == sample]
            if mine:
                rows.append(score_evaluator(f"{sample} sample: {score.name}", mine, seed=seed))
    return rows


def differences_from_best(
    scored: Sequence[tuple[EvaluatorScore, Sequence[tuple[LabelledItem, ItemVerdict]]]], *, seed: int = 0,
) -> list[EvaluatorScore]:
    """Each row with its kappa difference from the best evaluator's (baselines are never the best).

    The difference is taken on the items both evaluators have, and its 95% interval is a paired bootstrap: the
    same resamples of those items for both, so what the two share (the items' difficulty) cancels out.
    """
    candidates = [row for row, _ in scored if not row.baseline]
    if len(scored) < 2 or not candidates:
        return [row for row, _ in scored]
    best = max(candidates, key=lambda row: row.kappa)
    best_pairs = next(pairs for row, pairs in scored if row is best)
    best_by_id = {item.id: verdict for item, verdict in best_pairs}
    index = {label: position for position, label in enumerate(CLASSES)}
    rows = []
    for row, pairs in scored:
        if row is best:
            rows.append(row)
            continue
        common = [(item, verdict) for item, verdict in pairs if item.id in best_by_id]
        if not common:
            rows.append(row)
            continue
        human = [item.label for item, _ in common]
        mine = filled_predictions([verdict.winner for _, verdict in common])
        theirs = filled_predictions([best_by_id[item.id].winner for item, _ in common])
        picks = np.random.default_rng(seed).integers(0, len(common), size=(BOOTSTRAP_RESAMPLES, len(common)))
        human_codes = np.array([index[label] for label in human])
        difference = (kappas_of_resamples(np.array([index[label] for label in mine]), human_codes, picks)
                      - kappas_of_resamples(np.array([index[label] for label in theirs]), human_codes, picks))
        low, high = np.percentile(difference, [2.5, 97.5])
        rows.append(EvaluatorScore(**{**row.__dict__, "vs_best": kappa(mine, human) - kappa(theirs, human),
                                      "vs_best_low": float(low), "vs_best_high": float(high)}))
    return rows


def longer_answer_label(item: LabelledItem) -> str:
    """The label of the longest answer (tie when the longest length is shared)."""
    lengths = [len(response) for response in item.responses]
    longest = [index for index, length in enumerate(lengths) if length == max(lengths)]
    return candidate_label(longest[0]) if len(longest) == 1 else TIE


def baseline_scores(items: Sequence[LabelledItem], *, seed: int = 0) -> list[EvaluatorScore]:
    """The trivial evaluators an LLM must beat: always the longer answer, and always A."""
    rows = []
    for name, pick in (("baseline: always the longer answer", longer_answer_label), ("baseline: always A",
                                                                                      lambda item: "A")):
        pairs = [(item, ItemVerdict(winner=pick(item))) for item in items]
        rows.append(EvaluatorScore(**{**score_evaluator(name, pairs, seed=seed).__dict__, "baseline": True}))
    return rows


def jury_verdict(members: Sequence[ItemVerdict], rule: str) -> str | None:
    """The plurality rule of the paper (a shared top vote is a tie) or the winner of the mean scores."""
    if rule == "plurality":
        return plurality_verdict(member.winner for member in members)
    return winner_from_scores(mean_scores([member.scores for member in members]))


def jury_search(
    items: Sequence[LabelledItem],
    files: Sequence[VerdictFile],
    *,
    min_size: int = 2,
    rule: str = "plurality",
    seed: int = 0,
) -> tuple[list[JuryScore], int]:
    """Score every subset of at least `min_size` evaluators as a jury, best kappa first.

    Juries are compared on the same items: those every file has a verdict for. Returns the ranking and
    that item count. Each juror's verdict is read once; a jury only re-aggregates them.
    """
    if len(files) < min_size:
        raise ConfigError(f"--verdicts: {len(files)} files cannot form a jury of --min-size {min_size}")
    names = [verdict_file.name for verdict_file in files]
    if len(set(names)) != len(names):
        raise ConfigError(f"--verdicts: evaluator names repeat ({', '.join(names)}); give files distinct names")
    aligned = [{item.id: verdict for item, verdict in align(verdict_file, items)} for verdict_file in files]
    common = [item for item in items if all(item.id in by_id for by_id in aligned)]
    if not common:
        raise ConfigError("--verdicts: no benchmark item has a verdict in every file")
    if rule == "mean":
        for verdict_file, by_id in zip(files, aligned, strict=True):
            if any(len(by_id[item.id].scores) < 2 for item in common):
                raise ConfigError(f"--rule mean needs scores, and {verdict_file.path} has winners only")
    index = {label: position for position, label in enumerate(CLASSES)}
    human = [item.label for item in common]
    human_codes = np.array([index[label] for label in human])
    # One set of resamples for every jury: differences between two juries are then paired (the same items).
    picks = np.random.default_rng(seed).integers(0, len(common), size=(BOOTSTRAP_RESAMPLES, len(common)))
    point: dict[tuple[int, ...], float] = {}
    samples: dict[tuple[int, ...], np.ndarray] = {}
    agreement: dict[tuple[int, ...], float] = {}
    # Every evaluator alone is scored too: each jury is compared with its best member.
    for size in sorted({1, *range(min_size, len(files) + 1)}):
        for members in itertools.combinations(range(len(files)), size):
            predicted = filled_predictions(
                [jury_verdict([aligned[member][item.id] for member in members], rule) for item in common]
            )
            point[members] = kappa(predicted, human)
            samples[members] = kappas_of_resamples(np.array([index[label] for label in predicted]), human_codes, picks)
            agreement[members] = sum(p == h for p, h in zip(predicted, human, strict=True)) / len(common)
    ranked = sorted((members for members in point if len(members) >= min_size),
                    key=lambda members: (-point[members], len(members), tuple(names[m] for m in members)))
    first = ranked[0]
    ranking = []
    for members in ranked:
        low, high = np.percentile(samples[members], [2.5, 97.5])
        versus: dict[str, Any] = {}
        if len(members) > 1:
            best = max(members, key=lambda member: (point[(member,)], -member))
            versus_low, versus_high = paired_interval(samples[members], samples[(best,)])
            versus = {"best_member": names[best], "vs_best_member": point[members] - point[(best,)],
                      "vs_best_member_low": versus_low, "vs_best_member_high": versus_high}
        behind_low, _ = paired_interval(samples[first], samples[members])
        ranking.append(JuryScore(
            members=tuple(names[member] for member in members), n=len(common), kappa=point[members],
            kappa_low=float(low), kappa_high=float(high), agreement=agreement[members],
            tied_with_first=members == first or behind_low <= 0, **versus,
        ))
    return ranking, len(common)
