"""Which prompts a person reviews: the dispute rules and the audit sample (`generate --review`).

A verdict is *disputed* when the evaluators themselves could not agree (README, "People where the evaluators
disagree"):

- no verdict, or a tie at the top: the evaluator could not pick an answer;
- a judge with `--swap`: the two answer orders picked different answers;
- a judge without `--swap` (scoring strategies): the top two scores are within the dispute margin;
- a jury: no answer has a strict majority of the jurors' votes (an unparsed juror counts as a vote for none);
- a debate: the referees' own best answers differ (a referee tied at its own top has none), or the mean scores
  of the top two answers are within the dispute margin.

The margin is given on the 10-point scale (`--dispute-margin`, default 1) and scaled to the verdict's scale
(0.5 on 5 points, 10 on 100). The audit sample is drawn by prompt id alone (a hash, not a random generator), so
a resumed, extended or re-run directory samples the same prompts, whatever ran before; it is drawn apart from
the dispute rules, so the audit sample estimates agreement on every prompt, disputed or not.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from tools.rules.verdicts import TIE, candidate_label

ReviewMode = Literal["none", "disputed", "all"]
Sample = Literal["disputed", "audit", "all"]

DEFAULT_DISPUTE_MARGIN = 1.0
DEFAULT_AUDIT_SHARE = 0.05


def audit_share_for(mode: ReviewMode, audit_share: float | None) -> float:
    """The audit share in force: the one given, else 0 without review and DEFAULT_AUDIT_SHARE with it."""
    if audit_share is not None:
        return audit_share
    return 0.0 if mode == "none" else DEFAULT_AUDIT_SHARE


def in_audit_sample(prompt_id: str, share: float) -> bool:
    """Whether a prompt falls in the audit sample: its id's hash, read as a number in [0, 1), is below `share`."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"fellowship-audit:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def _top_two_within(scores: Sequence[float | None], margin: float) -> bool:
    values = sorted((float(score) for score in scores if score is not None), reverse=True)
    # Means of scores carry float error (8.3 - 7.3 is 1.0000000000000009): a gap of exactly the margin counts.
    return len(values) >= 2 and values[0] - values[1] <= margin + 1e-9


def _own_best(scores: Sequence[float | None]) -> str | None:
    """A referee's own best answer: the unique top of its scores (None when tied at the top or unparsed)."""
    if not scores or any(score is None for score in scores):
        return None
    values = [float(score) for score in scores if score is not None]
    leaders = [index for index, value in enumerate(values) if value == max(values)]
    return candidate_label(leaders[0]) if len(leaders) == 1 else None


def dispute_reasons(verdict: dict[str, Any], *, margin: float = DEFAULT_DISPUTE_MARGIN) -> list[str]:
    """Why a verdict (a `Verdict` as JSON, debate ones with `referee_scores`) is disputed: empty when it is not.

    `margin` is on the 10-point scale; each reason is a short sentence a reviewer reads on the review page.
    """
    method = verdict.get("method")
    if method == "none":
        return []  # one answer: nothing to choose
    scale = verdict.get("scale") or 10
    scaled = margin * scale / 10
    winner = verdict.get("winner")
    reasons: list[str] = []
    if winner is None:
        reasons.append("the evaluator gave no verdict")
    elif winner == TIE:
        reasons.append("the evaluator tied the top answers")
    scores = verdict.get("scores") or []
    if method == "judge":
        orders = verdict.get("order_winners") or []
        if verdict.get("swapped") and len(orders) == 2:
            if orders[0] != orders[1]:
                reasons.append(f"the two answer orders picked different answers ({orders[0]} and {orders[1]})")
        elif winner not in (None, TIE) and _top_two_within(scores, scaled):
            reasons.append(f"the top two scores are within {scaled:g} points")
    elif method == "jury":
        votes = verdict.get("juror_votes") or []
        counts = Counter(vote for vote in votes if vote is not None)
        top = counts.most_common(1)[0][1] if counts else 0
        if votes and 2 * top <= len(votes):
            shown = ", ".join(vote or "none" for vote in votes)
            reasons.append(f"no answer has a strict majority of the jurors' votes ({shown})")
    elif method == "debate":
        bests = [_own_best(entry.get("scores") or []) for entry in verdict.get("referee_scores") or []]
        if len(bests) > 1 and (None in bests or len(set(bests)) > 1):
            shown = ", ".join(best or "none" for best in bests)
            reasons.append(f"the referees' own best answers differ ({shown})")
        if winner not in (None, TIE) and _top_two_within(scores, scaled):
            reasons.append(f"the referees' mean scores of the top two are within {scaled:g} points")
    return reasons


def review_sample(
    prompt_id: str, verdict: dict[str, Any] | None, *, mode: ReviewMode, audit_share: float | None = None,
    margin: float = DEFAULT_DISPUTE_MARGIN,
) -> tuple[Sample | None, list[str]]:
    """Whether a prompt waits for a person, and as which sample, with the dispute reasons.

    `audit` (in the audit draw: shown blind) comes first, whatever the dispute rules say, so that the audit
    sample stays a plain random sample; then `disputed`; then, with `--review all`, `all`. (None, reasons) for a
    prompt that goes on without a person. A prompt with one answer is never reviewed.
    """
    if mode == "none" and not audit_share:
        return None, []
    if verdict is None or verdict.get("method") == "none":
        return None, []
    reasons = dispute_reasons(verdict, margin=margin)
    if in_audit_sample(prompt_id, audit_share_for(mode, audit_share)):
        return "audit", reasons
    if mode in ("disputed", "all") and reasons:
        return "disputed", reasons
    if mode == "all":
        return "all", reasons
    return None, reasons
