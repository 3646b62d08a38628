"""One run per output directory: a second run is refused naming the holder; a killed run's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from tools.cli import app
from tools.dev.stub_server import StubServer
from tools.outputs.run_lock import RunLock

runner = CliRunner()


def generate(prompts: Path, output: Path, spec: str) -> list[str]:
    return ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", spec, "--reviewer", spec,
            "--judge", spec]


def test_a_second_run_on_a_busy_directory_is_refused_naming_the_holder(tmp_path: Path, stub: StubServer) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Q?"}) + "\n")
    output = tmp_path / "run"
    with RunLock(output):  # another run holds the directory
        result = runner.invoke(app, generate(prompts, output, f"compat:stub@{stub.base_url}"))
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: --output {output}: in use by another run (pid {os.getpid()} on host "
                           f"{socket.gethostname()}, since ")
    assert stub.stats.requests == 0 and not (output / "progress.sqlite").exists()
    after = runner.invoke(app, generate(prompts, output, f"compat:stub@{stub.base_url}"))
    assert after.exit_code == 0, after.output  # released: the directory is free again


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path, stub: StubServer) -> None:
    output = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from tools.outputs.run_lock import RunLock;"
         f"lock = RunLock(Path({str(output)!r})).__enter__(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        busy = runner.invoke(app, generate(tmp_path / "missing.jsonl", output, "local:smollm2"))
        assert "missing.jsonl: file not found" in busy.output  # input is checked first, then the lock
        prompts = tmp_path / "p.jsonl"
        prompts.write_text(json.dumps({"prompt": "Q?"}) + "\n")
        refused = runner.invoke(app, generate(prompts, output, f"compat:stub@{stub.base_url}"))
        assert refused.exit_code == 1 and f"(pid {holder.pid} on host" in refused.output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert json.loads((output / "run.lock").read_text())["pid"] == holder.pid  # the stale file is still there
    taken = runner.invoke(app, generate(prompts, output, f"compat:stub@{stub.base_url}"))
    assert taken.exit_code == 0, taken.output
    assert json.loads((output / "run.lock").read_text())["pid"] == os.getpid()
