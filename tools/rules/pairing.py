"""Which answers of a prompt become preference pairs: pairing strategies, score margins, ties, degeneracy.

The rules, stated once:

- The chosen answer is the evaluator's winner. When the evaluator tied the top answers, it is the latest
  iteration among the top-scored (what the published pipeline kept: a later answer has seen more feedback);
  with `top_tie="skip"` such a prompt gives no rows.
- A degenerate answer (one that mostly repeats itself, `repetition_share`) is never chosen: the best
  non-degenerate answer takes its place; it may still be rejected.
- A DPO row needs `score(chosen) - score(rejected) > 0` and `>= min_margin`. Without scores (direct
  comparison) the winner is preferred to the other answer only when no margin is asked for.
- `best-vs-rest` (the paper): the chosen answer against every answer below it by the margin;
  `best-vs-worst` (UltraFeedback's binarisation): against the lowest-scored one only (the earliest among
  equals); `all-pairs`: every pair of answers whose scores differ by the margin, higher first.
- KTO: the top-scored answers are desirable (True), answers below the chosen one by the margin undesirable
  (False), answers in between are left out.
- Never a row whose chosen text equals its rejected text.

A person's decision (`generate --review`, `rank_by_person`) replaces the evaluator's ranking: the person's best
is chosen whatever the scores, the margin and the degeneracy rule say. `best-vs-rest`: against every other answer;
`best-vs-worst`: against the person's worst, else the evaluator's lowest-scored other answer, else the earliest
other answer; `all-pairs`: against every other answer, and every other answer against the person's worst. KTO:
the best desirable, every answer it is paired against undesirable. No acceptable answer (`none`) gives no rows.

Outcomes per prompt: `ok`, `ok_tied_top_later` (rows after a tied top), `tied_top` (all top answers tied, or
`skip`), `below_margin`, `degenerate_top` (no answer fit to be chosen), `identical_answers`, `no_verdict`,
`single_answer`; decided by a person: `decided_by_person`, `none_acceptable`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tools.rules.verdicts import TIE, label_index

Pairing = Literal["best-vs-rest", "best-vs-worst", "all-pairs"]
TopTie = Literal["later", "skip"]
PAIRINGS: tuple[Pairing, ...] = ("best-vs-rest", "best-vs-worst", "all-pairs")

REPETITION_NGRAM = 3
DEFAULT_DEGENERATE_SHARE = 0.5


def repetition_share(text: str, n: int = REPETITION_NGRAM) -> float:
    """The share of word n-grams that repeat an earlier one: 0 for fresh text, near 1 for a loop.

    Texts shorter than 2n words have too few n-grams to tell and count as 0.
    """
    words = re.findall(r"\w+", text.lower())
    if len(words) < 2 * n:
        return 0.0
    grams = [tuple(words[index:index + n]) for index in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


@dataclass(frozen=True)
class PairingRules:
    """How a run turns ranked answers into rows."""

    pairs: Pairing = "best-vs-rest"
    min_margin: float = 0.0
    top_tie: TopTie = "later"
    degenerate_share: float = DEFAULT_DEGENERATE_SHARE


@dataclass
class Ranked:
    """What the rules decided for one prompt: answer indexes, not texts."""

    outcome: str
    chosen: int | None = None
    dpo: list[tuple[int, int]] = field(default_factory=list)
    kto: list[tuple[int, bool]] = field(default_factory=list)


def _same(texts: Sequence[str], first: int, second: int) -> bool:
    return texts[first].strip() == texts[second].strip()


def rank_answers(
    texts: Sequence[str],
    scores: Sequence[float | None],
    winner: str | None,
    rules: PairingRules,
    degenerate: Sequence[bool] | None = None,
) -> Ranked:
    """Apply the module's rules to one prompt's answers (in iteration order) and its verdict."""
    count = len(texts)
    if count < 2:
        return Ranked("single_answer")
    if winner is None:
        return Ranked("no_verdict")
    flags = list(degenerate) if degenerate is not None else [False] * count
    known = [score for score in scores] if len(scores) == count else [None] * count
    scored = all(score is not None for score in known)
    if winner == TIE:
        if rules.top_tie == "skip" or not scored:
            return Ranked("tied_top")
        top = max(score for score in known if score is not None)
        candidates = [index for index in range(count) if known[index] == top and not flags[index]]
        if not candidates:
            return Ranked("degenerate_top")
        chosen = candidates[-1]
    else:
        chosen = label_index(winner)
        if flags[chosen]:
            fallback = [index for index in range(count) if not flags[index]]
            if not scored or not fallback:
                return Ranked("degenerate_top")
            best = max(known[index] for index in fallback)  # type: ignore[type-var]
            chosen = [index for index in fallback if known[index] == best][-1]
    if not scored:
        # Direct comparison: a preference without a magnitude, usable only when no margin is asked for.
        if rules.min_margin > 0:
            return Ranked("below_margin", chosen)
        others = [index for index in range(count) if index != chosen and not _same(texts, chosen, index)]
        if not others:
            return Ranked("identical_answers", chosen)
        return Ranked("ok", chosen, [(chosen, index) for index in others],
                      [(chosen, True), *[(index, False) for index in others]])
    values = [float(score) for score in known if score is not None]

    def below(high: int, low: int) -> bool:
        gap = values[high] - values[low]
        return gap > 0 and gap >= rules.min_margin and not _same(texts, high, low)

    rejected = [index for index in range(count) if below(chosen, index)]
    if rules.pairs == "best-vs-worst" and rejected:
        worst = min(values[index] for index in rejected)
        rejected = [next(index for index in rejected if values[index] == worst)]
    if rules.pairs == "all-pairs":
        dpo = [(high, low) for high in range(count) if not flags[high] for low in range(count) if below(high, low)]
        dpo.sort(key=lambda pair: (pair[0] != chosen, pair))
    else:
        dpo = [(chosen, index) for index in rejected]
    if not dpo:
        identical = all(_same(texts, chosen, index) for index in range(count))
        return Ranked("identical_answers" if identical else ("tied_top" if winner == TIE and not rejected
                                                            and rules.min_margin == 0 else "below_margin"), chosen)
    top = values[chosen]
    desirable = [index for index in range(count) if values[index] == top and not flags[index]]
    undesirable = [index for index in range(count) if below(chosen, index)]
    kto = [(index, True) for index in desirable] + [(index, False) for index in undesirable]
    # A tied top that still gave rows is counted apart: the card says how many prompts the tie rule saved.
    return Ranked("ok_tied_top_later" if winner == TIE else "ok", chosen, dpo, kto)


def rank_by_person(
    texts: Sequence[str], scores: Sequence[float | None], best: str | None, worst: str | None, rules: PairingRules,
) -> Ranked:
    """The module's rules for a prompt a person decided: `best`/`worst` are answer letters, None best is `none`."""
    if best is None:
        return Ranked("none_acceptable")
    chosen = label_index(best)
    others = [index for index in range(len(texts)) if index != chosen and not _same(texts, chosen, index)]
    if not others:
        return Ranked("identical_answers", chosen)
    low = label_index(worst) if worst is not None else None
    if rules.pairs == "best-vs-worst":
        if low is None or low not in others:
            scored = len(scores) == len(texts)
            known = {index: scores[index] for index in others if scored and scores[index] is not None}
            low = min(known, key=lambda index: (known[index], index)) if known else others[0]
        rejected = [low]
    else:
        rejected = others
    dpo = [(chosen, index) for index in rejected]
    if rules.pairs == "all-pairs" and low is not None:
        dpo += [(index, low) for index in others if index != low and not _same(texts, index, low)]
    kto = [(chosen, True), *[(index, False) for index in rejected]]
    return Ranked("decided_by_person", chosen, dpo, kto)
