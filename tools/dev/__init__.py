"""Development rigs, not used by the commands.

The stub OpenAI-compatible server, the LangSmith capture server, and the benchmark behind `make bench`.
"""
