"""Injecting the model source into graph nodes, so that context stays configuration data.

A node that calls a model is written `async def node(state, runtime, models: ModelSource)` and bound
where its graph is built: `bind_models(node, models)` is a node LangGraph can call as `(state, runtime)`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.runtime import Runtime

from agents.models import ModelSource, shared_model_source

ModelNode = Callable[[Any, Runtime[Any], ModelSource], Awaitable[dict[str, Any]]]


def resolve_model_source(model_source: ModelSource | None) -> ModelSource:
    """The injected source, or the process's shared registry (graphs served by `langgraph dev`)."""
    return model_source if model_source is not None else shared_model_source()


def bind_models(node: ModelNode, models: ModelSource) -> Any:
    """`node` with its model source bound; keeps the node's name for drawings and traces.

    Typed Any on purpose: LangGraph's `add_node` overloads infer a node's input from the graph state, while a
    bound node receives either the state or a `Send` payload (given as `input_schema=`).
    """

    async def bound(state: Any, runtime: Runtime[Any]) -> dict[str, Any]:
        return await node(state, runtime, models)

    bound.__name__ = bound.__qualname__ = node.__name__
    bound.__doc__ = node.__doc__
    return bound
