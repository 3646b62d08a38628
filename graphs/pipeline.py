"""The preference-dataset pipeline (SPEC.md section 4): feedback loop, then an evaluator, then the record.

The feedback loop's nodes (`generate`, `review`: `graphs.feedback_loop.add_feedback_loop`) are the pipeline's
own, so a checkpointer given to the pipeline checkpoints every step of the loop and a killed run resumes
mid-loop. They are not a subgraph: a subgraph is a second graph loop with checkpoints of its own for every
prompt, about a tenth of a run's CPU (`make bench`). The jury and the debate are subgraph nodes, so drawings
and Studio show their seats and roles inside the pipeline and a debate resumes mid-round; the judge, one or
two calls, is one node (`graphs.judge.judge_in_one_step`: the judge graph's calls and decision, without a
graph loop of its own). Once the loop is done, `route_evaluator` picks the evaluator the run's context names
and hands it the answers as one item (a Send, not a node of its own: each superstep costs a checkpoint).

After the evaluator, `route_review` sends a prompt that waits for a person (`review` in the context: a disputed
verdict, or the audit sample; `tools.rules.disputes`) to `human_review`, which pauses it with LangGraph's
`interrupt()` until a decision comes back as `Command(resume=...)`; every other prompt ends there. `human_review`
makes no model call: a resumed node runs again from its top.

    START -> generate <-> review (the loop) -(route_evaluator)-> judge | jury | debate | single_answer
    judge | jury | debate -(route_review)-> human_review | END;  human_review, single_answer -> END
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langgraph.graph import END, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send, interrupt

from agents.models import ModelSource
from agents.records import Verdict
from agents.roles import DEFAULT_ROLES, RefereeRole
from graphs.binding import bind_models, resolve_model_source
from graphs.context import GenerationContext
from graphs.debate import build_debate_graph
from graphs.feedback_loop import LoopInput, LoopState, add_feedback_loop
from graphs.judge import judge_in_one_step
from graphs.jury import build_jury_graph
from graphs.state import EvaluationInput, ItemState
from tools.inputs.panels import configured_panel
from tools.rules.decisions import HumanDecision, ReviewRequest
from tools.rules.disputes import review_sample

# The shape of the pipeline's checkpoints: raise it whenever a node of the pipeline or of its subgraphs is
# added, removed or renamed. Version 2: no gather_feedback, start_judging, open_jury or collect_answers step.
# Version 3: the feedback loop's nodes are the pipeline's own (no feedback_loop subgraph), the judge one node.
# Version 4: human_review after the evaluators.
CHECKPOINT_VERSION = 4


class PipelineState(LoopState, total=False):
    """The feedback loop's state, plus what the evaluator reads and writes."""

    item: ItemState
    """The prompt and all N answers, as the evaluator reads them."""
    verdict: dict[str, Any]
    """The evaluator's verdict over the answers (a `Verdict` as JSON)."""
    human: dict[str, Any]
    """A person's decision on a prompt that paused for review (a `HumanDecision` as JSON, with `sample`)."""


def collect_answers(state: PipelineState) -> ItemState:
    """The evaluator's item: the prompt and every answer, in iteration order."""
    answers = [answer["text"] for answer in sorted(state["answers"], key=lambda answer: answer["iteration"])]
    return {"id": state["prompt_id"], "prompt": state["prompt"], "responses": answers}


async def route_evaluator(state: PipelineState, runtime: Runtime[GenerationContext]) -> Send:
    """Where the loop exits: the evaluator the context names, sent the answers as its item.

    One answer (early stop, N = 1) is not ranked.
    """
    item = collect_answers(state)
    evaluator = "single_answer" if len(item["responses"]) < 2 else runtime.context.evaluator
    return Send(evaluator, {"prompt_id": state["prompt_id"], "item": item})


async def single_answer(state: PipelineState) -> dict[str, Any]:
    """The verdict of a prompt with one answer: that answer, unranked."""
    verdict = Verdict(id=state["prompt_id"], method="none", models=[], scores=[None], winner="A", parse_ok=True)
    return {"verdict": verdict.model_dump()}


def waiting_request(state: PipelineState, context: GenerationContext) -> ReviewRequest | None:
    """What the prompt asks a person, when its verdict sends it to review (None: it goes on without one)."""
    sample, reasons = review_sample(state["prompt_id"], state.get("verdict"), mode=context.review,
                                    audit_share=context.audit_share, margin=context.dispute_margin)
    if sample is None:
        return None
    return ReviewRequest(prompt_id=state["prompt_id"], sample=sample, reasons=reasons,
                         answers=len(state.get("answers", [])))


async def route_review(state: PipelineState, runtime: Runtime[GenerationContext]) -> str:
    """After the evaluator: `human_review` for a prompt that waits for a person, else the end."""
    return "human_review" if waiting_request(state, runtime.context) is not None else END


async def human_review(state: PipelineState, runtime: Runtime[GenerationContext]) -> dict[str, Any]:
    """Pause for a person's decision (`interrupt`), then keep it; no model call, so a resume costs nothing.

    The resume value follows `HumanDecision` (the interrupt's `answer_schema`); one that does not, or names an
    answer the prompt does not have, raises (the CLI checks decisions before it resumes with them).
    """
    request = waiting_request(state, runtime.context)
    if request is None:  # a context changed between the pause and the resume: nothing to ask
        return {}
    answer = interrupt(request.model_dump())
    decision = HumanDecision.model_validate(answer)
    decision.check_letters(request.answers)
    return {"human": {**decision.model_dump(), "sample": request.sample, "reasons": request.reasons}}


def build_pipeline_graph(
    *, roles: Sequence[RefereeRole] = DEFAULT_ROLES, model_source: ModelSource | None = None
) -> StateGraph[Any, Any, Any, Any]:
    """The uncompiled pipeline; `roles` is the debate panel, `model_source` as for `build_judge_graph`."""
    models = resolve_model_source(model_source)
    builder = StateGraph(PipelineState, context_schema=GenerationContext, input_schema=LoopInput)
    builder.add_node("judge", bind_models(judge_in_one_step, models), input_schema=EvaluationInput)
    builder.add_node("jury", build_jury_graph(model_source=models).compile(name="jury"))
    builder.add_node("debate", build_debate_graph(roles=roles, model_source=models).compile(name="debate"))
    builder.add_node("single_answer", single_answer)
    builder.add_node("human_review", human_review)
    add_feedback_loop(builder, models, exit_loop=route_evaluator, exits=["judge", "jury", "debate", "single_answer"])
    for evaluator in ("judge", "jury", "debate"):
        builder.add_conditional_edges(evaluator, route_review, ["human_review", END])
    builder.add_edge("single_answer", END)
    builder.add_edge("human_review", END)
    return builder


# For langgraph.json: the debate panel of $FELLOWSHIP_CONFIG's `debate_roles`, else the default panel.
graph = build_pipeline_graph(roles=configured_panel()).compile(name="pipeline")
