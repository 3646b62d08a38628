"""The preference-dataset pipeline (SPEC.md section 4): feedback loop, then an evaluator, then the record.

The feedback loop's nodes (`generate`, `review`: `graphs.feedback_loop.add_feedback_loop`) are the pipeline's
own, so a checkpointer given to the pipeline checkpoints every step of the loop and a killed run resumes
mid-loop. They are not a subgraph: a subgraph is a second graph loop with checkpoints of its own for every
prompt, about a tenth of a run's CPU (`make bench`). The jury and the debate are subgraph nodes, so drawings
and Studio show their seats and roles inside the pipeline and a debate resumes mid-round; the judge, one or
two calls, is one node (`graphs.judge.judge_in_one_step`: the judge graph's calls and decision, without a
graph loop of its own). Once the loop is done, `route_evaluator` picks the evaluator the run's context names
and hands it the answers as one item (a Send, not a node of its own: each superstep costs a checkpoint).

    START -> generate <-> review (the loop) -(route_evaluator)-> judge | jury | debate | single_answer -> END
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langgraph.graph import END, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

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

# The shape of the pipeline's checkpoints: raise it whenever a node of the pipeline or of its subgraphs is
# added, removed or renamed. Version 2: no gather_feedback, start_judging, open_jury or collect_answers step.
# Version 3: the feedback loop's nodes are the pipeline's own (no feedback_loop subgraph), the judge one node.
CHECKPOINT_VERSION = 3


class PipelineState(LoopState, total=False):
    """The feedback loop's state, plus what the evaluator reads and writes."""

    item: ItemState
    """The prompt and all N answers, as the evaluator reads them."""
    verdict: dict[str, Any]
    """The evaluator's verdict over the answers (a `Verdict` as JSON)."""


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
    add_feedback_loop(builder, models, exit_loop=route_evaluator, exits=["judge", "jury", "debate", "single_answer"])
    for evaluator in ("judge", "jury", "debate", "single_answer"):
        builder.add_edge(evaluator, END)
    return builder


# For langgraph.json: the debate panel of $FELLOWSHIP_CONFIG's `debate_roles`, else the default panel.
graph = build_pipeline_graph(roles=configured_panel()).compile(name="pipeline")
