"""The collector's tuning applies to the processes fellowship owns, and only to them.

Each case runs in a fresh interpreter: the tuning is process-wide, and this test process must keep its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agents.garbage_collection import RUN_THRESHOLDS, START_UP_THRESHOLDS
from tools.dev.stub_server import StubServer

PROJECT = Path(__file__).resolve().parent.parent


def collector_state_after(code: str) -> dict[str, object]:
    """Run `code` in a new interpreter; it must print `STATE` (the thresholds and frozen count) as JSON, last."""
    prelude = ("import gc, json\n"
               "def STATE():\n"
               "    print(json.dumps({'thresholds': list(gc.get_threshold()), 'frozen': gc.get_freeze_count()}),"
               " flush=True)\n")
    done = subprocess.run([sys.executable, "-c", prelude + code], cwd=PROJECT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_library_user_keeps_the_interpreters_collector() -> None:
    state = collector_state_after("from agents import garbage_collection\n"
                                  "before = gc.get_threshold()\n"
                                  "garbage_collection.for_the_run()\n"
                                  "assert gc.get_threshold() == before\n"
                                  "STATE()\n")
    assert state["frozen"] == 0


def test_a_run_freezes_once_and_sets_the_runs_thresholds() -> None:
    state = collector_state_after("from agents import garbage_collection\n"
                                  "garbage_collection.during_start_up()\n"
                                  f"assert gc.get_threshold() == {START_UP_THRESHOLDS}\n"
                                  "garbage_collection.for_the_run()\n"
                                  "frozen = gc.get_freeze_count()\n"
                                  "garbage = [[] for _ in range(1000)]\n"
                                  "garbage_collection.for_the_run()  # a second run in the process: no new freeze\n"
                                  "assert gc.get_freeze_count() == frozen\n"
                                  "STATE()\n")
    assert state["thresholds"] == list(RUN_THRESHOLDS)
    assert isinstance(state["frozen"], int) and state["frozen"] > 1_000  # what the interpreter holds


def test_the_cli_tunes_the_collector_of_a_real_run(tmp_path: Path, stub: StubServer) -> None:
    """`fellowship generate` (through `main`, as the console script calls it) runs with the run's settings."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {index}?"}) + "\n" for index in range(3)))
    spec = f"compat:stub@{stub.base_url}"
    argv = ["fellowship", "generate", "--prompts", str(prompts), "--output", str(tmp_path / "out"),
            "--generator", spec, "--reviewer", spec, "--judge", spec]
    # `main` ends the process itself once the exit handlers have run: the state is printed by one of them.
    state = collector_state_after("import atexit, sys\n"
                                  "atexit.register(STATE)\n"
                                  f"sys.argv = {argv!r}\n"
                                  "from tools.cli.main import main\n"
                                  "main()\n")
    assert state["thresholds"] == list(RUN_THRESHOLDS) and isinstance(state["frozen"], int) and state["frozen"] > 0
    assert (tmp_path / "out" / "dpo.jsonl").exists()
    # A command that runs nothing keeps the start-up setting and freezes nothing.
    state = collector_state_after("import atexit, sys\n"
                                  "atexit.register(STATE)\n"
                                  "sys.argv = ['fellowship', '--help']\n"
                                  "from tools.cli.main import main\n"
                                  "main()\n")
    assert state == {"thresholds": list(START_UP_THRESHOLDS), "frozen": 0}
