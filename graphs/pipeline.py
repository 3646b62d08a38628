"""The preference-dataset pipeline (SPEC.md section 4): feedback loop, then an evaluator, then the record.

The feedback loop is a subgraph node sharing the pipeline's state keys, so a checkpointer given to the
pipeline also checkpoints every step inside the loop: a killed run resumes mid-loop. The evaluator is
any evaluation graph (judge, jury, debate) run over all N answers at once.

    START -> feedback_loop (subgraph) -> evaluate -> END
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agents.records import Verdict
from graphs.context import GenerationContext
from graphs.evaluation import evaluation_graph
from graphs.feedback_loop import LoopInput, LoopState, build_feedback_loop_graph


class PipelineState(LoopState, total=False):
    verdict: dict[str, Any]




def prompt_id_for(prompt: Any) -> str:
    """A stable id from the prompt's content (as distilabel does): the same prompt, the same id."""
    canonical = json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@cache
def _evaluator(method: str) -> Any:
    return evaluation_graph(method)


async def evaluate(state: PipelineState, runtime: Runtime[GenerationContext]) -> dict[str, Any]:
    """Rank all answers with the configured evaluator; a single answer (early stop) needs no ranking."""
    context = runtime.context
    answers = [answer["text"] for answer in sorted(state["answers"], key=lambda answer: answer["iteration"])]
    if len(answers) < 2:
        verdict = Verdict(
            id=state["prompt_id"], method="none", models=[], scores=[None], winner="A", parse_ok=True
        ).model_dump()
        return {"verdict": verdict}
    item = {"id": state["prompt_id"], "prompt": state["prompt"], "responses": answers}
    result = await _evaluator(context.evaluator).ainvoke(
        {"item": item},
        config={"run_name": f"{context.evaluator}:{state['prompt_id']}", "metadata": {"item_id": state["prompt_id"]}},
        context=context,
    )
    return {"verdict": result["verdict"]}


def build_pipeline_graph() -> StateGraph[Any, Any, Any, Any]:
    builder = StateGraph(PipelineState, context_schema=GenerationContext, input_schema=LoopInput)
    builder.add_node("feedback_loop", build_feedback_loop_graph().compile(name="feedback_loop"))
    builder.add_node("evaluate", evaluate)
    builder.add_edge(START, "feedback_loop")
    builder.add_edge("feedback_loop", "evaluate")
    builder.add_edge("evaluate", END)
    return builder


graph = build_pipeline_graph().compile(name="pipeline")
