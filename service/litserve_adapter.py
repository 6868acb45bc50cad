"""The one adapter to LitServe: every use of LitServe beyond its public LitAPI/LitServer lives here.

/classify runs in LitServe's worker process (`ClassifyAPI`: its own process and GIL, so a burst of
classification never slows the token streams), but not through LitServe's per-request path: that sends
every request as its own message through `multiprocessing.Manager` queues, which capped /classify near
1,000 requests/s with or without batching. Instead `ClassifyBatcher` (a LitServe *spec*, the extension
point LitServe's own OpenAI spec uses) parks requests in the API server and sends whatever has gathered
(at most `max_texts` texts, the first waiting at most `wait_s`, at most two batches at the worker at once)
as ONE message; the worker answers with one list of ready JSON bodies.

What this relies on in LitServe 0.2.19 (`check_litserve` verifies it at start-up and in the tests):
the spec's `response_buffer` and `request_queue` (set by `LitSpec.setup`), the request-queue tuple
`(response_queue_id, uid, timestamp, payload)`, `ResponseBufferItem(event=...)` with its `.response` of
`(payload, LitAPIStatus)`, `LitServer._shutdown_event` (to stop the server), `LitServer.inference_workers`
(the classifier's process, told first that the coming SIGTERM is for it),
`LitServer.workers_setup_status` (the worker's readiness), that `LitServer.run` binds its socket with
uvicorn's `Config.bind_socket` (replaced to add SO_REUSEPORT, so worker processes share the port) and
that the app's lifespan is LitServe's start-up (wrapped to learn when the server serves).
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections import deque
from pathlib import Path

import litserve as ls
from starlette.middleware.gzip import GZipMiddleware

try:
    from litserve.specs.base import LitSpec
    from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus
except ImportError as e:  # pragma: no cover — only with an untested LitServe
    raise ImportError(f"rnnserve's LitServe adapter was written for litserve 0.2.19; the installed litserve "
                      f"{ls.__version__} lacks what it uses: {e}") from e

from .artifact import choose_int8, load_artifact, read_manifest
from .classifier import classify
from .errors import RequestError, json_bytes
from .memory import trim_when_idle

log = logging.getLogger("rnnserve")


class LitServeIncompatible(RuntimeError):
    """The installed LitServe lacks something this adapter relies on."""


def check_litserve() -> None:
    """Fail with a clear message when the installed LitServe no longer has what this adapter uses."""
    problems = []
    spec = LitSpec()
    for attr in ("response_buffer", "request_queue", "response_queue_id", "add_endpoint", "setup"):
        if not hasattr(spec, attr):
            problems.append(f"LitSpec has no {attr!r}")
    if "event" not in inspect.signature(ResponseBufferItem).parameters:
        problems.append("ResponseBufferItem takes no 'event'")
    if not hasattr(LitAPIStatus, "OK") or not hasattr(WorkerSetupStatus, "READY"):
        problems.append("LitAPIStatus.OK / WorkerSetupStatus.READY are gone")
    src = inspect.getsource(ls.LitServer)
    for name in ("_shutdown_event", "workers_setup_status", "inference_workers", "healthcheck_path", "info_path"):
        if name not in src:
            problems.append(f"LitServer no longer uses {name!r}")
    if "bind_socket" not in inspect.getsource(ls.LitServer.run):
        problems.append("LitServer.run no longer binds through uvicorn's Config.bind_socket (SO_REUSEPORT hook)")
    run_params = inspect.signature(ls.LitServer.run).parameters
    for name in ("num_api_servers", "api_server_worker_type"):
        if name not in run_params:
            problems.append(f"LitServer.run takes no {name!r}")
    if problems:
        raise LitServeIncompatible(f"litserve {ls.__version__} is not what rnnserve's adapter was written for "
                                   f"(0.2.19): " + "; ".join(problems))


# ----------------------------------------------------------------------------- the worker process


class ClassifyAPI(ls.LitAPI):
    """Runs in LitServe's worker process. Each message from the API server is a whole batch: a list of
    requests' texts, classified length-bucketed, and answered as one list of ready JSON bodies."""

    def __init__(self, models: dict[str, str], threads: int, int8: bool | None, spec: "ClassifyBatcher"):
        super().__init__(max_batch_size=1, spec=spec, api_path="/classify")
        self.model_paths, self.threads, self.int8 = models, threads, int8

    def setup(self, device):
        # Ctrl-C, `kill -TERM -PGID` or systemd's control-group stop reach every process of the group at
        # once: this one is stopped by its worker, after the worker has drained, so it keeps classifying
        # until `stop_server` sends SIGUSR1; after that SIGTERM (LitServe's way of ending it) ends it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        released = [False]

        def on_release(signum, frame):
            released[0] = True

        def on_term(signum, frame):
            if released[0]:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
        signal.signal(signal.SIGUSR1, on_release)
        signal.signal(signal.SIGTERM, on_term)
        self.last_work = [0.0]
        trim_when_idle(self.last_work)  # unpickled batches of long texts would otherwise stay in the heap
        self.models = {name: load_artifact(path, name, int8=choose_int8(read_manifest(Path(path)), self.int8)[0],
                                           threads=self.threads or None)
                       for name, path in self.model_paths.items()}

    def decode_request(self, request):
        return request  # already a list of {"model", "texts", "single"}, validated in the API server

    def predict(self, batch: list[dict]) -> list[bytes]:
        """All texts of all requests, per model, in length-bucketed calls."""
        results: list[list] = [[] for _ in batch]
        by_model: dict[str, list] = {}
        for i, r in enumerate(batch):
            by_model.setdefault(r["model"], []).append(i)
        for name, rows in by_model.items():
            probs, cut = classify(self.models[name], [t for i in rows for t in batch[i]["texts"]])
            answers = iter(zip(probs, cut))
            for i in rows:
                results[i] = [next(answers) for _ in batch[i]["texts"]]
        self.last_work[0] = time.monotonic()
        return [self._body(r, res) for r, res in zip(batch, results)]

    def _body(self, r: dict, answers: list) -> bytes:
        labels = self.models[r["model"]].labels
        items = [{"label": labels[int(p.argmax())], "scores": {l: round(float(v), 6) for l, v in zip(labels, p)},
                  "truncated": cut}  # the model read only the beginning (read_chars or read_tokens of /info)
                 for p, cut in answers]
        body = {"model": r["model"], **items[0]} if r["single"] else {"model": r["model"], "results": items}
        return json_bytes(body)

    def encode_response(self, output):
        return output


# ----------------------------------------------------------------------------- the API server side


class ClassifyBatcher:
    """Parks /classify requests in the API server and sends each gathered batch to the worker as one
    message. Made a LitServe spec by `make_server` (it needs the spec's queues); `classify` is what the
    /classify route awaits."""

    def __init__(self, max_texts: int, wait_s: float, max_queue: int = 2048, timeout: float = 60.0, on_batch=None):
        self.max_texts, self.wait_s, self.timeout = max(1, max_texts), wait_s, timeout
        self.max_queue = max(1, max_queue)
        self.on_batch = on_batch  # called with the number of texts of each batch sent (a metric)
        self.spec = None
        self._pending: deque | None = None  # created on the event loop
        self._pending_texts = 0  # parked, not yet sent
        self.in_flight = 0       # texts parked or at the worker: what admission control bounds

    def classify(self, model: str, texts: list[str], single: bool) -> asyncio.Future:
        """Park one request; the future is its JSON body, once its batch has come back from the worker.
        Cancelling the future (the client went away) drops its texts if they have not been sent yet. Raises
        a 503 RequestError when the queue of texts is full."""
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending, self._wake, self._slots = deque(), asyncio.Event(), asyncio.Semaphore(2)
            self._flusher = loop.create_task(self._flush_forever())
        if self.in_flight + len(texts) > self.max_queue:
            raise RequestError(503, f"classification queue full ({self.in_flight} texts waiting or being classified,"
                                    f" limit {self.max_queue}); retry shortly", None, "overloaded", {"Retry-After": "1"})
        fut = loop.create_future()
        self.in_flight += len(texts)
        fut.add_done_callback(lambda _: self._done(len(texts)))
        self._pending.append(({"model": model, "texts": texts, "single": single}, fut, loop.time()))
        self._pending_texts += len(texts)
        self._wake.set()
        return fut

    def _done(self, n: int) -> None:
        self.in_flight -= n

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
            # give the oldest request up to wait_s to gather company, unless the batch is already full
            while self._pending_texts < self.max_texts:
                left = self._pending[0][2] + self.wait_s - loop.time() if self._pending else 0
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch, n = [], 0
            while self._pending and (not batch or n + len(self._pending[0][0]["texts"]) <= self.max_texts):
                item, fut, _ = self._pending.popleft()
                self._pending_texts -= len(item["texts"])
                if not fut.done():
                    batch.append((item, fut))
                    n += len(item["texts"])
            if not batch:
                self._slots.release()
                continue
            loop.create_task(self._send(batch, n))

    async def _send(self, batch: list, n: int) -> None:
        try:
            if self.on_batch:
                self.on_batch(n)
            spec, uid, event = self.spec, uuid.uuid4(), asyncio.Event()
            spec.response_buffer[uid] = ResponseBufferItem(event=event)
            spec.request_queue.put((spec.response_queue_id, uid, time.monotonic(), [item for item, _ in batch]))
            try:
                await asyncio.wait_for(event.wait(), self.timeout)
                bodies, status = spec.response_buffer.pop(uid).response
            except asyncio.TimeoutError:
                spec.response_buffer.pop(uid, None)
                bodies, status = None, None
            if status == LitAPIStatus.OK and isinstance(bodies, list) and len(bodies) == len(batch):
                for (_, fut), body in zip(batch, bodies):
                    if not fut.done():
                        fut.set_result(body)
                return
            log.error(json.dumps({"event": "classify_failed", "detail": repr(bodies)[:300]}))
            err = RequestError(503, "classification failed in the model worker; retry the request", None,
                               "inference_error", {"Retry-After": "1"})
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
        finally:
            self._slots.release()


class ClassifySpec(LitSpec):
    """Gives the batcher LitServe's request queue and response buffer; registers no endpoint."""

    def __init__(self, batcher: ClassifyBatcher):
        super().__init__()
        self.api_path = "/classify"  # LitServe keys the worker's request queue by the spec's path
        self.batcher = batcher
        batcher.spec = self

    def __getstate__(self):  # the spec is pickled to the worker process: leave the API side behind
        state = super().__getstate__()
        state["batcher"] = None
        return state

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output


# ----------------------------------------------------------------------------- the server


def make_server(classifiers: dict[str, str], threads: int, int8: bool | None, batcher: ClassifyBatcher,
                middlewares: list) -> ls.LitServer:
    """A LitServer whose worker classifies; LitServe's own /, /health and /info make way for ours."""
    api = ClassifyAPI(classifiers, threads, int8, ClassifySpec(batcher))
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60,
                          healthcheck_path="/litserve/health", info_path="/litserve/info", middlewares=middlewares)
    # LitServe answers GET / with "litserve running"; / is the playground's
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    # LitServe adds gzip when its own API does not stream; ours do, and gzip's wrapper would sit on every SSE
    # write (our JSON answers are small: compressing them costs more than it saves on a local network)
    server.app.user_middleware = [m for m in server.app.user_middleware if m.cls is not GZipMiddleware]
    return server


class _QuietThreadTerminate(logging.Filter):
    """LitServe's shutdown calls `terminate()` on its uvicorn worker even when that is a thread (ours is),
    and logs the AttributeError at ERROR level on every clean stop; that line says nothing to a user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "object has no attribute 'terminate'" not in record.getMessage()


def run_server(server: ls.LitServer, host: str, port: int, reuse_port: bool = False, send_buffer: int = 0,
               **uvicorn_options) -> None:
    """Serve until `stop_server`: uvicorn in a thread of this process (the engines live here too). With
    `reuse_port` the socket is bound with SO_REUSEPORT, so several workers share the port and the kernel
    spreads connections over them; `send_buffer` (bytes) fixes each connection's kernel send buffer.
    `uvicorn_options` go to uvicorn.Config (LitServer.run passes them on)."""
    if reuse_port:
        _bind_with_reuse_port(send_buffer)
    logging.getLogger("litserve.server").addFilter(_QuietThreadTerminate())
    server.run(host=host, port=port, num_api_servers=1, api_server_worker_type="thread",
               generate_client_file=False, log_level="warning", **uvicorn_options)


def _bind_with_reuse_port(send_buffer: int = 0) -> None:
    """LitServer.run binds its socket with uvicorn's `Config.bind_socket`, which sets SO_REUSEADDR only;
    this process binds with SO_REUSEPORT too (and a fixed send buffer, which accepted sockets inherit)."""
    import uvicorn

    def bind_socket(config) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if config.host and ":" in config.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        try:
            sock.bind((config.host, config.port))
        except OSError as e:
            log.error(json.dumps({"event": "bind_failed", "host": config.host, "port": config.port,
                                  "error": e.strerror}))
            sys.exit(3)
        sock.set_inheritable(True)
        return sock
    uvicorn.Config.bind_socket = bind_socket


def on_serving(server: ls.LitServer, callback) -> None:
    """Call `callback(loop)` on the server's event loop once it is serving (after LitServe's start-up)."""
    lifespan = server.app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def serving(app):
        async with lifespan(app) as state:
            callback(asyncio.get_running_loop())
            yield state
    server.app.router.lifespan_context = serving


def stop_server(server: ls.LitServer) -> None:
    for proc in server.inference_workers:  # the classifier's process: LitServe's SIGTERM now ends it
        if proc.pid and proc.is_alive():
            os.kill(proc.pid, signal.SIGUSR1)  # before it has set its handler, this ends it just the same
    server._shutdown_event.set()


def worker_ready(server: ls.LitServer) -> bool:
    """Whether LitServe's worker process (the classifier) has started and is ready."""
    status = getattr(server, "workers_setup_status", None)
    try:
        return bool(status) and all(v == WorkerSetupStatus.READY for v in status.values())
    except Exception:  # noqa: BLE001 — the manager is gone (shutting down)
        return False
