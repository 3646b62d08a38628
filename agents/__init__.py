"""Roles: what one LLM call does (judge, juror, referee, generator, reviewer), model loading, output schemas.

Functions here take plain inputs and a chat model; they know nothing of graph state.
"""
