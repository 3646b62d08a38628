"""Model specs (`provider:model` strings) and the one loader that turns them into chat models.

Specs:
  openai:MODEL              OpenAI, key from OPENAI_API_KEY
  together:ORG/MODEL        Together AI, key from TOGETHER_API_KEY
  compat:MODEL@BASE_URL     any OpenAI-compatible server (vLLM, Ollama, llama.cpp); key from COMPAT_API_KEY if set
  local:smollm2             the embedded SmolLM2-135M-Instruct, served in-process (the default)
  local:/path/to/file.gguf  another GGUF served the same way

Every provider goes through the OpenAI chat-completions client, so retries, timeouts, usage accounting
and structured output behave the same everywhere.
"""

from __future__ import annotations

import asyncio
import os
import socket
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlparse

from pydantic import SecretStr

from agents.embedded import EmbeddedServer, resolve_gguf
from agents.rate_limits import EndpointControllers, paced_client_class
from tools.errors import ConfigError

if TYPE_CHECKING:  # LangChain loads with the first model, not with the command line (`fellowship --help`)
    from langchain_core.language_models import BaseChatModel

    from agents.batches import BatchCoordinator
    from agents.cache import CallCacheFile
    from agents.early_calls import EarlyCalls

DEFAULT_MODEL = "local:smollm2"
PROVIDERS = ("openai", "together", "compat", "local")
API_KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "together": "TOGETHER_API_KEY", "compat": "COMPAT_API_KEY"}
# Where a cloud provider's calls go: the first variable set wins (the ones its own client reads), else its host.
BASE_URL_VARIABLES = {"openai": ("OPENAI_API_BASE", "OPENAI_BASE_URL"), "together": ("TOGETHER_API_BASE",)}
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "together": "https://api.together.xyz/v1"}
PREFLIGHT_TIMEOUT_S = 3.0
# llama.cpp's repetition controls for `local:` models: small models at temperature 0 fall into loops
# (one sentence four times), and a looping answer is a useless DPO row. Deterministic, like greedy decoding.
LOCAL_SAMPLING = {"repeat_penalty": 1.15, "repeat_last_n": 256, "dry_multiplier": 0.8}

OutputFormat = Literal["auto", "text", "json"]
Scoring = Literal["auto", "expected", "parsed"]
# `--scoring auto`: the providers whose chat completions return `top_logprobs` get probability-weighted scores
# (README "Probability-weighted scores" has the measurement behind it). Together's API returns only the chosen
# tokens' probabilities, no alternatives, so its scores stay the numbers written.
EXPECTED_SCORING_PROVIDERS = frozenset({"openai", "compat", "local"})


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `provider:model` string."""

    provider: str
    model: str
    base_url: str | None = None

    @property
    def text(self) -> str:
        """The spec as a string again (`compat:` keeps its URL)."""
        suffix = f"@{self.base_url}" if self.provider == "compat" else ""
        return f"{self.provider}:{self.model}{suffix}"


def parse_model_spec(spec: str, *, flag: str = "--model") -> ModelSpec:
    """Parse a spec string; a malformed one raises ConfigError naming the flag it came from."""
    provider, separator, rest = spec.partition(":")
    if not separator or not rest:
        raise ConfigError(f"{flag} {spec!r}: expected PROVIDER:MODEL, e.g. openai:gpt-4o or local:smollm2")
    if provider not in PROVIDERS:
        raise ConfigError(f"{flag} {spec!r}: unknown provider {provider!r} (known: {', '.join(PROVIDERS)})")
    if provider == "compat":
        model, at, base_url = rest.rpartition("@")
        if not at or not model or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{flag} {spec!r}: expected compat:MODEL@http://HOST:PORT/v1")
        return ModelSpec(provider, model, base_url.rstrip("/"))
    return ModelSpec(provider, rest)


def base_url_of(spec: ModelSpec) -> str | None:
    """The base URL a spec's calls go to; None for `local:` models, whose server this process starts."""
    if spec.provider == "compat":
        return spec.base_url
    if spec.provider in BASE_URL_VARIABLES:
        variables = BASE_URL_VARIABLES[spec.provider]
        configured = next((os.environ[name] for name in variables if os.environ.get(name)), None)
        return (configured or DEFAULT_BASE_URLS[spec.provider]).rstrip("/")
    return None


def connect_problem(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within `timeout`, else why not, in a few words."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return "host not found"
    except OSError as error:
        return f"cannot resolve the host ({error.strerror or error})"
    problem = "no address to connect to"
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.settimeout(timeout)
            try:
                probe.connect(address)
                return None
            except TimeoutError:
                problem = f"no answer within {timeout:g} s"
            except ConnectionRefusedError:
                problem = "connection refused"
            except OSError as error:
                problem = error.strerror or str(error)
    return problem


def preflight_endpoints(roles: Sequence[tuple[str, str]], *, timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Connect to every endpoint the run will call, once each and all at once, before any work.

    `roles` are (flag, spec) pairs. An endpoint that cannot be resolved or connected to within `timeout`
    raises ConfigError naming the flag, the spec and the host, so a wrong URL, a typo in a host name or a
    machine without network costs seconds, not one failed prompt after another.
    """
    endpoints: dict[tuple[str, int], tuple[str, str]] = {}
    for flag, spec in roles:
        base_url = base_url_of(parse_model_spec(spec, flag=flag))
        if base_url is None:
            continue
        parsed = urlparse(base_url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        endpoints.setdefault((parsed.hostname or "localhost", port), (flag, spec))
    if not endpoints:
        return
    with ThreadPoolExecutor(max_workers=min(8, len(endpoints))) as pool:
        problems = list(pool.map(lambda endpoint: connect_problem(endpoint[0], endpoint[1], timeout), endpoints))
    for (host, port), problem in zip(endpoints, problems, strict=True):
        if problem is not None:
            flag, spec = endpoints[(host, port)]
            raise ConfigError(f"{flag} {spec}: cannot reach {host}:{port} ({problem})")


def check_model_spec(spec: str, *, flag: str = "--model") -> ModelSpec:
    """What can be checked without the network: provider, key, GGUF file (endpoints: `preflight_endpoints`)."""
    parsed = parse_model_spec(spec, flag=flag)
    if parsed.provider in ("openai", "together"):
        variable = API_KEY_VARIABLES[parsed.provider]
        if not os.environ.get(variable):
            raise ConfigError(f"{flag} {spec}: the environment variable {variable} is not set")
    elif parsed.provider == "local":
        resolve_gguf(parsed.model)
    return parsed


def check_model_roles(roles: Sequence[tuple[str, str]]) -> None:
    """Check every (flag, spec) of a command, then connect to each endpoint: the whole up-front check."""
    for flag, spec in roles:
        check_model_spec(spec, flag=flag)
    preflight_endpoints(roles)


def scoring_is_expected(scoring: Scoring, spec: str) -> bool:
    """Whether `--scoring` gives `spec` probability-weighted scores: as set, or under `auto` by its provider."""
    if scoring != "auto":
        return scoring == "expected"
    return parse_model_spec(spec).provider in EXPECTED_SCORING_PROVIDERS


@dataclass(frozen=True)
class BatchSettings:
    """How a `--batch` run sends its calls (agents/batches.py): where it keeps them, batch size and wait, retries."""

    directory: Path  # the run's directory for `batches.sqlite` and the request files
    size: int | None = None  # requests per batch; None: the provider's limit
    wait_s: float = 60.0  # a queue is sent this long after its first request, full or not
    max_retries: int = 6  # times a failed, expired or cancelled line is sent again (per process)
    poll_s: float = 1.0  # the shortest time between two polls of a batch's status (they space out as it ages)


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """How every chat model of a run is configured."""

    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (the paper used 0)"})
    max_tokens: int = field(default=512, metadata={"help": "cap on tokens generated per call"})
    timeout_s: float = field(default=120.0, metadata={"help": "per-request timeout in seconds"})
    max_retries: int = field(
        default=6, metadata={"help": "retries of timeouts, 5xx and 429 (honouring Retry-After), with backoff"}
    )
    output_format: OutputFormat = field(
        default="auto",
        metadata={"help": "evaluator answer format: text lines, a JSON schema, or auto (JSON for local models)"},
    )
    cache_path: Path | None = field(
        default=None, metadata={"help": "SQLite file of the cross-run call cache (agents/cache.py); None: no cache"}
    )
    scoring: Scoring = field(
        default="auto",
        metadata={"help": "scores as the probability-weighted mean of the score tokens (expected) or as written "
                          "(parsed); auto: expected where the provider returns top_logprobs"},
    )
    adaptive: bool = field(
        default=True, metadata={"help": "pace and cap requests per endpoint to its rate limit (agents/rate_limits.py)"}
    )
    calls_cap: int = field(default=1024, metadata={"help": "this process's share of --concurrency"})
    rate_share: float = field(default=1.0, metadata={"help": "this process's share of each provider's rate"})
    batch: BatchSettings | None = field(
        default=None, metadata={"help": "send every chat call through the providers' batch APIs (--batch)"})


class ModelSource(Protocol):
    """What graph nodes need from a model loader; tests substitute scripted fakes."""

    def chat_model(self, spec: str) -> BaseChatModel:
        """The chat model for a spec."""
        ...

    def json_mode(self, spec: str) -> bool:
        """Whether evaluators ask this spec for JSON (structured output) rather than text lines."""
        ...

    def expected_scores(self, spec: str) -> bool:
        """Whether scores from this spec are probability-weighted means (`--scoring`) rather than as written."""
        ...


class ModelRegistry:
    """Loads each spec once per run and owns the embedded servers it starts."""

    def __init__(self, settings: ModelSettings | None = None, *, closed_in_loop: bool = True) -> None:
        """A registry for one event loop; `closed_in_loop` picks its HTTP pool (see `_http_client`).

        True: the owner calls `aclose` inside that loop, or the loop's process ends with it (a Ray worker's).
        """
        from agents.cache import CacheStats  # with LangChain's cache interface: loaded for runs only

        self.settings = settings or ModelSettings()
        self.closed_in_loop = closed_in_loop
        self._models: dict[str, BaseChatModel] = {}
        self._servers: dict[str, EmbeddedServer] = {}
        self._http: Any = None
        # One rate-limit controller per endpoint for every model of this registry (their requests share a pool).
        self.endpoint_controllers = EndpointControllers(cap=self.settings.calls_cap, share=self.settings.rate_share)
        self.cache_stats = CacheStats()
        self._cache_file: CallCacheFile | None = None
        self.batches: BatchCoordinator | None = None  # with `--batch`: the run's queues and batches
        self.on_batch_event: Callable[[str], None] | None = None  # hears each batch sent, re-attached, finished
        self.early_calls: EarlyCalls | None = None  # a fresh run's first calls, sent before the graphs loaded
        self.after_first_reply: Callable[[], object] | None = None  # called once, when the first call has its answer

    def _http_client(self) -> Any:
        """One connection pool per registry.

        langchain-openai otherwise shares a process-wide async client, which stays bound to the first event loop and
        fails under the next one ("Event loop is closed").
        """
        if self._http is None and self.settings.batch is not None:
            import httpx2

            from agents.batches import BatchCoordinator, BatchTransport

            # Every chat request of the run answered by batch: no pacing (batch lines meet no rate limit), and no
            # timeout (a batch takes up to a day); the provider's other routes go out directly.
            self.batches = BatchCoordinator(self.settings.batch, on_event=self.on_batch_event)
            # httpx2: the HTTP library the openai client is built on.
            self._http = httpx2.AsyncClient(transport=BatchTransport(self.batches), timeout=None)
        if self._http is None:
            import openai

            if self.closed_in_loop:
                # aiohttp's connection pool, through the openai client's own transport (openai[aiohttp]): a
                # quarter less CPU per call than its default httpx2 pool under many concurrent requests, whose
                # pool probes every idle connection (two system calls each) on every request (`make bench`).
                client_class: type = openai.DefaultAioHttpClient
            else:
                # An aiohttp session must be closed inside its event loop, or it logs "Unclosed client
                # session" when collected; httpx2's pool needs no closing.
                client_class = openai.DefaultAsyncHttpxClient
            if self.early_calls is not None or self.after_first_reply is not None:
                from agents.early_calls import early_reply_client_class

                client_class = early_reply_client_class(client_class)
            if self.settings.adaptive:
                client_class = paced_client_class(client_class)  # the outermost: it assumes it is the class made
            self._http = client_class(timeout=self.settings.timeout_s)
            self._http.controllers = self.endpoint_controllers
            self._http.early_calls = self.early_calls
            self._http.after_first_reply = self.after_first_reply
        return self._http

    def _register_batch_endpoint(self, spec: ModelSpec, base_url: str | None, api_key: str) -> None:
        """With `--batch`: tell the run's batch coordinator who answers at the spec's endpoint."""
        if self.batches is None:
            return
        if base_url is None:
            raise ConfigError(f"--batch: {spec.text} runs in this process; batch APIs are for openai:, together: "
                              "and compat: endpoints")
        self.batches.register(base_url, spec.model, provider=spec.provider, spec=spec.text, api_key=api_key)

    def json_mode(self, spec: str) -> bool:
        """JSON for `local:` models under `auto` (the tiny model keeps a grammar, not a text format); else as set."""
        if self.settings.output_format != "auto":
            return self.settings.output_format == "json"
        # The embedded model is too small to keep a text answer format reliably; a grammar keeps it.
        return parse_model_spec(spec).provider == "local"

    def expected_scores(self, spec: str) -> bool:
        """`--scoring`: as set, or under `auto` expected for providers that return top_logprobs."""
        return scoring_is_expected(self.settings.scoring, spec)

    def chat_model(self, spec: str) -> BaseChatModel:
        """The chat model for a spec, loaded once per registry."""
        if spec not in self._models:
            from agents.plain_requests import send_plain_bodies  # the openai client loads with the first model

            self._models[spec] = send_plain_bodies(self._load(parse_model_spec(spec)))
        return self._models[spec]

    def _load(self, spec: ModelSpec) -> BaseChatModel:
        common: dict[str, Any] = {
            "model": spec.model,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
            "timeout": self.settings.timeout_s,
            # By batch, the coordinator sends a failed line again itself (in a later batch): the client must not.
            "max_retries": self.settings.max_retries if self.settings.batch is None else 0,
            "http_async_client": self._http_client(),
        }
        if self.settings.cache_path is not None:
            from agents.cache import CallCache, CallCacheFile

            if self._cache_file is None:
                self._cache_file = CallCacheFile(self.settings.cache_path)
            common["cache"] = CallCache(self._cache_file, spec.text, self.cache_stats)
        if spec.provider == "together":
            from langchain_together import ChatTogether

            key = os.environ.get(API_KEY_VARIABLES["together"], "")
            self._register_batch_endpoint(spec, base_url_of(spec), key)
            return ChatTogether(api_key=SecretStr(key), base_url=base_url_of(spec), **common)

        from langchain_openai import ChatOpenAI

        if spec.provider == "openai":
            key = os.environ.get(API_KEY_VARIABLES["openai"], "")
            self._register_batch_endpoint(spec, base_url_of(spec), key)
            # The base URL is passed explicitly: the preflight checked exactly this endpoint.
            return ChatOpenAI(api_key=SecretStr(key), base_url=base_url_of(spec), **common)
        if spec.provider == "compat":
            key = os.environ.get(API_KEY_VARIABLES["compat"]) or "not-needed"
            self._register_batch_endpoint(spec, spec.base_url, key)
            return ChatOpenAI(api_key=SecretStr(key), base_url=spec.base_url, **common)
        self._register_batch_endpoint(spec, None, "")
        server = self._server_for(spec.model)
        # The local server answers for whatever model name it is given; keep the spec's for traces.
        return ChatOpenAI(api_key=SecretStr("not-needed"), base_url=server.base_url, extra_body=LOCAL_SAMPLING,
                          **common)

    def _server_for(self, name: str) -> EmbeddedServer:
        path = resolve_gguf(name)
        key = str(path)
        if key not in self._servers:
            self._servers[key] = EmbeddedServer(path)
        return self._servers[key]

    def close(self) -> None:
        """Stop embedded servers; the HTTP pool is dropped (use `aclose` inside the loop to close it cleanly)."""
        for server in self._servers.values():
            server.stop()
        self._servers.clear()
        self._models.clear()
        self._http = None
        if self._cache_file is not None:
            self._cache_file.close()
            self._cache_file = None

    async def aclose(self) -> None:
        """Close the batch coordinator and the HTTP pool inside the event loop, then stop the embedded servers."""
        if self.early_calls is not None:
            self.early_calls.close()
        if self.batches is not None:
            await self.batches.aclose()
            self.batches = None
        if self._http is not None:
            await self._http.aclose()
        self.close()


class PerLoopModelSource:
    """One ModelRegistry per running event loop, made on first use with default settings.

    Chat clients are bound to the loop that made them, and a server such as `langgraph dev` runs graphs on
    more than one loop: each loop gets its own registry (and HTTP pool).
    """

    def __init__(self, settings: ModelSettings | None = None) -> None:
        self.settings = settings or ModelSettings()
        self._registries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ModelRegistry] = (
            weakref.WeakKeyDictionary()
        )

    def _registry(self) -> ModelRegistry:
        loop = asyncio.get_running_loop()
        if loop not in self._registries:
            # Nobody closes these (a server's or a notebook's loops come and go): a pool that needs no closing.
            self._registries[loop] = ModelRegistry(self.settings, closed_in_loop=False)
        return self._registries[loop]

    def chat_model(self, spec: str) -> BaseChatModel:
        """The chat model for a spec, from this event loop's registry."""
        return self._registry().chat_model(spec)

    def json_mode(self, spec: str) -> bool:
        """Whether evaluators ask this spec for JSON (the settings decide; no loop needed)."""
        return ModelRegistry(self.settings).json_mode(spec)

    def expected_scores(self, spec: str) -> bool:
        """Whether this spec's scores are probability-weighted (the settings decide; no loop needed)."""
        return scoring_is_expected(self.settings.scoring, spec)


_shared_source = PerLoopModelSource()


def shared_model_source() -> ModelSource:
    """The process's model source, for graphs built without an injected one (`langgraph dev`, Studio)."""
    return _shared_source
