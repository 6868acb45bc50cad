"""Service configuration: every option has a command-line flag and an environment variable."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .artifact import ArtifactError

DEFAULT_MODELS = Path(__file__).resolve().parents[1] / "models"

# Request limits (documented in the README; part of the HTTP contract).
MAX_PROMPT_CHARS = 8192
MAX_TOKENS = 4096
MAX_STOP = 4
MAX_STOP_CHARS = 64
MAX_TEXTS = 256
MAX_TEXT_CHARS = 8192
MAX_CHOICES = 16      # /v1: choices in one request (prompts x n)
MAX_PROMPTS = 16      # /v1/completions: prompts in one list
MAX_MESSAGES = 256    # /v1/chat/completions: messages of one conversation
MAX_LOGPROBS = 5      # /v1/completions: `logprobs`, most likely tokens reported per token (as OpenAI)
MAX_TOP_LOGPROBS = 20  # /v1/chat/completions: `top_logprobs` (as OpenAI)
MAX_LOGIT_BIAS = 300   # `logit_bias`: token ids biased in one request (as OpenAI)
MAX_SCHEMA_BYTES = 32768  # a constraint (JSON schema, regex, grammar) as JSON text
MAX_CHOICE_STRINGS = 256  # `guided_choice`: the strings to choose from


@dataclass
class Config:
    # name: (env var, help) in OPTIONS below
    models: str = str(DEFAULT_MODELS)
    host: str = "0.0.0.0"
    port: int = 8000
    workers: int = 0
    threads: int = 0
    engine_threads: int = 0
    max_batch: int = 128
    max_queue: int = 256
    prefill_chunk: int = 256
    prefix_cache_mb: float = 64.0
    max_body_bytes: int = 1 << 20
    session_ttl: float = 3600.0
    max_sessions: int = 10000
    session_memory_mb: float = 256.0
    sessions: str = ""
    state_dir: str = ".rnnserve"
    session_claim_seconds: float = 30.0
    sessions_file: str = ""
    drain_seconds: float = 5.0
    max_connections: int = 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    send_timeout: float = 30.0
    send_buffer_kb: int = 256
    stream_buffer_events: int = 1024
    stream_interval: str = "auto"
    replica: str = ""
    api_key: str = ""
    int8: str = "auto"
    classify_max_batch: int = 64
    classify_wait_ms: float = 5.0
    classify_max_queue: int = 2048
    log_level: str = "info"
    model_list: list[str] = field(default_factory=list)  # --model NAME=DIR, repeatable


OPTIONS = {
    "models": ("RNNSERVE_MODELS", "folder of artifacts to serve (each subfolder one model), or NAME=DIR,NAME=DIR"),
    "host": ("RNNSERVE_HOST", "address to listen on"),
    "port": ("RNNSERVE_PORT", "port to listen on"),
    "workers": ("RNNSERVE_WORKERS", "worker processes on the one port, each with its own engines and ONNX "
                "Runtime sessions (0 = auto: one per 2 cores, at most 8)"),
    "threads": ("RNNSERVE_THREADS", "ONNX Runtime intra-op threads per model (0 = the worker's share of the "
                "cores divided among its engine threads)"),
    "engine_threads": ("RNNSERVE_ENGINE_THREADS", "decode threads per language model in each worker, each "
                       "stepping its own share of the streams (0 = the worker's share of the cores, at most 4)"),
    "max_batch": ("RNNSERVE_MAX_BATCH", "streams decoded at once per language model (split among its engine "
                  "threads)"),
    "max_queue": ("RNNSERVE_MAX_QUEUE", "requests waiting for a slot before new ones get 503"),
    "prefill_chunk": ("RNNSERVE_PREFILL_CHUNK", "prompt tokens read per call (long prompts are chunked)"),
    "prefix_cache_mb": ("RNNSERVE_PREFIX_CACHE_MB", "memory per worker for recurrent states at prefix boundaries, "
                        "so a resent conversation reads only its new text (0 = off)"),
    "max_body_bytes": ("RNNSERVE_MAX_BODY_BYTES", "largest request body accepted (413 above)"),
    "session_ttl": ("RNNSERVE_SESSION_TTL", "seconds an idle session is kept"),
    "max_sessions": ("RNNSERVE_MAX_SESSIONS", "sessions kept at most (least recently used go first)"),
    "session_memory_mb": ("RNNSERVE_SESSION_MEMORY_MB", "memory cap for session state, in MB"),
    "sessions": ("RNNSERVE_SESSIONS", "session store: sqlite:///PATH (default: STATE_DIR/sessions.db, shared by "
                 "the workers, survives crashes), redis://HOST:PORT/DB (replicas on many hosts) or memory "
                 "(one worker only)"),
    "state_dir": ("RNNSERVE_STATE_DIR", "folder for the server's own files (the default session store)"),
    "session_claim_seconds": ("RNNSERVE_SESSION_CLAIM_SECONDS", "a session's claim by a running request lapses "
                              "this long after its holder stops renewing it (a crashed worker)"),
    "sessions_file": ("RNNSERVE_SESSIONS_FILE", "an old SIGTERM dump of sessions: imported into the store once at "
                      "start, then renamed *.imported-TIME"),
    "drain_seconds": ("RNNSERVE_DRAIN_SECONDS", "on SIGTERM, how long running streams may go on to their end "
                      "before the rest are ended with finish_reason 'shutdown' (/health is 503 from the signal on)"),
    "max_connections": ("RNNSERVE_MAX_CONNECTIONS", "open connections per worker; one more is answered 503 and "
                        "closed"),
    "header_timeout": ("RNNSERVE_HEADER_TIMEOUT", "seconds a request's headers may take to arrive (408 after)"),
    "body_timeout": ("RNNSERVE_BODY_TIMEOUT", "seconds a request's body may take to arrive (408 after)"),
    "keepalive_timeout": ("RNNSERVE_KEEPALIVE_TIMEOUT", "seconds an idle keep-alive connection stays open"),
    "send_timeout": ("RNNSERVE_SEND_TIMEOUT", "seconds a client may leave a write unread before its stream is "
                     "cancelled and its connection closed"),
    "send_buffer_kb": ("RNNSERVE_SEND_BUFFER_KB", "kernel send buffer per connection, in KB (0 = the kernel's "
                       "autotuning, up to several MB a connection); a client that stops reading fills it, then "
                       "send_timeout ends its stream"),
    "stream_buffer_events": ("RNNSERVE_STREAM_BUFFER_EVENTS", "events waiting for a stream's slow client; past it "
                             "the stream is cancelled and its connection closed"),
    "stream_interval": ("RNNSERVE_STREAM_INTERVAL", "milliseconds a stream holds its text back after each write, "
                        "so that one event carries every token made meanwhile: auto (0.25 ms per running stream, at "
                        "most 25 ms), or a number (0: each step's text goes out at once)"),
    "replica": ("RNNSERVE_REPLICA", "this server's name in the X-Rnnserve-Replica header and /info (default: "
                "HOSTNAME:PORT)"),
    "api_key": ("RNNSERVE_API_KEY", "require this key (Authorization: Bearer KEY or X-API-Key: KEY)"),
    "int8": ("RNNSERVE_INT8", "which of an artifact's models to serve: 1 model.int8.onnx wherever there is one, 0 "
             "model.onnx, auto (default) model.int8.onnx where it is exact across batches and costs at most "
             "0.01 bits/char (its manifest says both), else model.onnx"),
    "classify_max_batch": ("RNNSERVE_CLASSIFY_MAX_BATCH", "/classify requests batched into one call"),
    "classify_wait_ms": ("RNNSERVE_CLASSIFY_WAIT_MS", "how long /classify waits to fill a batch"),
    "classify_max_queue": ("RNNSERVE_CLASSIFY_MAX_QUEUE", "texts of /classify requests waiting or being classified "
                           "at once; a request that would go past it gets 503 + Retry-After"),
    "log_level": ("RNNSERVE_LOG_LEVEL", "debug, info, warning or error"),
}


def _cast(value: str, like):
    if isinstance(like, bool):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return type(like)(value)


def int8_setting(c: Config) -> bool | None:
    """RNNSERVE_INT8 as True (1), False (0) or None (auto); anything else is an error naming the variable."""
    v = str(c.int8).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    if v in ("", "auto"):
        return None
    raise ValueError(f"RNNSERVE_INT8={c.int8!r}: 0, 1 or auto")


def stream_interval(c: Config) -> float | None:
    """RNNSERVE_STREAM_INTERVAL in seconds, or None for auto; anything else is an error naming the variable."""
    v = str(c.stream_interval).strip().lower()
    if v in ("", "auto"):
        return None
    try:
        ms = float(v)
    except ValueError:
        ms = -1.0
    if not 0 <= ms <= 1000:
        raise ValueError(f"RNNSERVE_STREAM_INTERVAL={c.stream_interval!r}: auto, or milliseconds from 0 to 1000")
    return ms / 1000


def from_env(env=os.environ) -> Config:
    c = Config()
    for name, (var, _) in OPTIONS.items():
        if var in env and env[var] != "":
            setattr(c, name, _cast(env[var], getattr(c, name)))
    return c


def resolve_models(c: Config) -> dict[str, Path]:
    """Served models by name, from --model NAME=DIR flags or RNNSERVE_MODELS."""
    specs = list(c.model_list)
    if not specs:
        if "=" in c.models:
            specs = [s for s in c.models.split(",") if s.strip()]
        else:
            root = Path(c.models)
            if not root.is_dir():
                raise ArtifactError(f"{root}: models folder not found (set RNNSERVE_MODELS or pass --model NAME=DIR)")
            if (root / "model.json").exists():
                return {root.name: root}
            found = {p.name: p for p in sorted(root.iterdir()) if (p / "model.json").exists()}
            if not found:
                raise ArtifactError(f"{root}: no artifacts (subfolders holding model.json)")
            return found
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ArtifactError(f"--model {spec!r}: expected NAME=ARTIFACT_DIR")
        out[name.strip()] = Path(path.strip())
    return out


def cores() -> int:
    """CPU cores this process may use: the affinity mask and a container's CPU quota (cgroup v2 `cpu.max`,
    v1 `cpu.cfs_quota_us`) count, so a pod limited to 2 CPUs on a 64-core node plans for 2."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            parts = Path(quota_file).read_text().split()
            quota, period = parts[0], (parts[1] if period_file is None else Path(period_file).read_text().strip())
            if quota not in ("max", "-1"):
                n = min(n, max(1, int(int(quota) / int(period) + 0.5)))
                break
        except (OSError, ValueError, IndexError):
            continue
    return max(1, n)


def workers(c: Config) -> int:
    """Worker processes: one per 2 cores, at most 8 (docs/benchmarks.md, workers); one for `memory` sessions."""
    if c.workers > 0:
        return c.workers
    if c.sessions == "memory":
        return 1
    return max(1, min(8, cores() // 2))


def worker_cores(c: Config) -> int:
    """The cores one worker may count on."""
    return max(1, cores() // workers(c))


def engine_threads(c: Config) -> int:
    """Decode threads per language model and worker: two half-batches stepped in parallel, one intra-op
    thread each, beat one batch with two intra-op threads (docs/performance.md)."""
    return c.engine_threads if c.engine_threads > 0 else max(1, min(4, worker_cores(c)))


def lm_threads(c: Config) -> int:
    """ONNX Runtime intra-op threads of a language model's session: its engines share the worker's cores."""
    return c.threads or max(1, worker_cores(c) // engine_threads(c))


def classifier_threads(c: Config) -> int:
    return c.threads or worker_cores(c)


def replica_name(c: Config) -> str:
    return c.replica or f"{socket.gethostname()}:{c.port}"


def session_url(c: Config) -> str:
    return c.sessions or f"sqlite:///{Path(c.state_dir) / 'sessions.db'}"
