"""Orchestration: LangGraph state machines for the judge, the jury, the debate and (later) generation."""
