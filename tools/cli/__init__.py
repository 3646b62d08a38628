"""The `fellowship` command line.

Thin commands that validate their options (`options.py`), say which model plays which role, call the runners in
`graphs` and print what came out. `main.py` holds the run commands, `meta.py` the meta-evaluation ones, `common.py`
what they share.
"""

from tools.cli.main import app, draw_graph, main, run_generate, run_generate_with, why_no_rows

__all__ = ["app", "draw_graph", "main", "run_generate", "run_generate_with", "why_no_rows"]
