"""Deterministic code with no LLM calls: parsing, verdict rules, input loaders, tracing and the CLI."""
