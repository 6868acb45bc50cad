"""The HTTP skin: LitServe serves, the engines generate.

- /classify is a LitServe spec (ClassifySpec): concurrent requests are parked
  in the API server and each gathered batch (up to `classify_max_batch`
  texts, the first waiting at most `classify_wait_ms`) goes to LitServe's
  worker process (ClassifyAPI) as one message; the worker classifies it in
  length-bucketed ORT calls and answers with ready JSON bodies.
- /generate, /v1/completions and /sessions are routes on LitServer's app,
  served by the generation engines in the API server's own process (one per
  core per language model): LitServe's streaming path sends one pickled
  message per output across processes, which would cap token throughput far
  below the model (docs/design.md). An engine hands each step's events to the
  event loop in one call; the SSE writer coalesces whatever has piled up into
  one message.
"""

import asyncio
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import litserve as ls
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import schemas
from .artifact import Artifact, load_artifact, read_manifest
from .config import (MAX_PROMPT_CHARS, MAX_STOP, MAX_TEXT_CHARS, MAX_TEXTS, MAX_TOKENS, Config, engine_threads,
                     resolve_models)
from .engine import Engine, Overloaded, Request as GenRequest
from .evaluate import classify_texts
from .metrics import ServiceMetrics
from .sampler import SamplingParams
from .schemas import ClassifyRequest, CompletionRequest, GenerateRequest, RequestError, SessionCreate
from .sessions import SessionError, SessionStore

log = logging.getLogger("rnnserve")
_HEALTH = {"check": lambda: True}


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


# ----------------------------------------------------------------------------- /classify (LitServe)


class ClassifyAPI(ls.LitAPI):
    """Runs in LitServe's worker process. Each message from the API server is a whole batch: a list of
    requests' texts, classified length-bucketed, and answered as one list of ready JSON bodies."""

    def __init__(self, models: dict[str, str], threads: int, int8: bool, spec: "ClassifySpec"):
        super().__init__(max_batch_size=1, spec=spec, api_path="/classify")
        self.model_paths, self.threads, self.int8 = models, threads, int8

    def setup(self, device):
        self.models = {name: load_artifact(path, name, int8=self.int8 and self._has_int8(path),
                                           threads=self.threads or None)
                       for name, path in self.model_paths.items()}

    @staticmethod
    def _has_int8(path) -> bool:
        return bool(read_manifest(Path(path)).get("int8"))

    def decode_request(self, request):
        return request  # already a list of {"model", "texts", "single"}, validated in the API server

    def predict(self, batch: list[dict]) -> list[bytes]:
        """All texts of all requests, per model, in length-bucketed calls (evaluate.classify_texts)."""
        results: list[list] = [[] for _ in batch]
        by_model: dict[str, list] = {}
        for i, r in enumerate(batch):
            by_model.setdefault(r["model"], []).append(i)
        for name, rows in by_model.items():
            probs = iter(classify_texts(self.models[name], [t for i in rows for t in batch[i]["texts"]]))
            for i in rows:
                results[i] = [next(probs) for _ in batch[i]["texts"]]
        return [self._body(r, res) for r, res in zip(batch, results)]

    def _body(self, r: dict, probs: list) -> bytes:
        labels = self.models[r["model"]].labels
        items = [{"label": labels[int(p.argmax())], "scores": {l: round(float(v), 6) for l, v in zip(labels, p)}}
                 for p in probs]
        body = {"model": r["model"], **items[0]} if r["single"] else {"model": r["model"], "results": items}
        return json.dumps(body, ensure_ascii=False).encode()

    def encode_response(self, output):
        return output

    def health(self) -> bool:
        return _HEALTH["check"]()


class ClassifySpec(LitSpec):
    """POST /classify as a LitServe spec: concurrent requests are coalesced in the API server.

    LitServe's own dynamic batching sends every request to the worker as its own message through
    `multiprocessing.Manager` queues (a put, a START and a result, each a proxy round trip); measured,
    that per-request cost capped /classify near 1,000 requests/s with or without batching. Here the
    endpoint parks each request; a flusher sends whatever has gathered (at most `max_texts` texts,
    waiting at most `wait_s` for the first to have company, at most two batches at the worker at once)
    as ONE message, and hands each request its ready JSON body when the answer comes back."""

    def __init__(self, max_texts: int, wait_s: float, timeout: float = 60.0, metrics=None):
        super().__init__()
        self.max_texts, self.wait_s, self.timeout, self.metrics = max(1, max_texts), wait_s, timeout, metrics
        self.api_path = "/classify"  # LitServe keys the worker's request queue by the spec's path
        self._pending: deque | None = None  # created on the event loop, never pickled to the worker
        self._pending_texts = 0
        self.add_endpoint("/classify", self.classify, ["POST"])

    def __getstate__(self):
        state = super().__getstate__()
        state.update(_pending=None, _wake=None, _slots=None, _flusher=None, metrics=None)
        return state

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    async def classify(self, request: Request):
        c = schemas.parse(ClassifyRequest, await request.body())
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending, self._wake, self._slots = deque(), asyncio.Event(), asyncio.Semaphore(2)
            self._flusher = loop.create_task(self._flush_forever())
        if not schemas.SERVED_CLASSIFIERS:
            raise RequestError(404, "this server has no classifier loaded", "model", "not_found")
        single = c.texts is None
        item = {"model": c.model or schemas.SERVED_CLASSIFIERS[0], "texts": [c.text] if single else c.texts,
                "single": single}
        fut = loop.create_future()
        self._pending.append((item, fut, loop.time()))
        self._pending_texts += len(item["texts"])
        self._wake.set()
        try:
            body = await fut
        except asyncio.CancelledError:
            fut.cancel()  # the client went away: its texts are skipped if not yet sent
            raise
        return Response(body, media_type="application/json")

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
            if self.metrics:
                self.metrics.classify_batch.observe(n)
            uid = uuid.uuid4()
            event = asyncio.Event()
            self.response_buffer[uid] = ResponseBufferItem(event=event)
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(), [item for item, _ in batch]))
            try:
                await asyncio.wait_for(event.wait(), self.timeout)
                bodies, status = self.response_buffer.pop(uid).response
            except asyncio.TimeoutError:
                self.response_buffer.pop(uid, None)
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


# ----------------------------------------------------------------------------- generation


class Service:
    """Owns the engines, the sessions and the metrics; registers the routes."""

    def __init__(self, config: Config, lms: dict[str, Artifact], classifiers: dict[str, Artifact]):
        self.config = config
        self.lms, self.classifiers = lms, classifiers
        self.metrics = ServiceMetrics()
        self.sessions = SessionStore(config.session_ttl, config.max_sessions,
                                     int(config.session_memory_mb * (1 << 20)))
        # Each language model gets `n` engine threads sharing its ORT session (run() is thread-safe);
        # a request goes to the one with the most free places, so the running streams are split evenly.
        # The limits are split exactly, so the model as a whole keeps max_batch running and max_queue waiting.
        n = max(1, min(engine_threads(config), config.max_batch))
        share = lambda total, i: total // n + (i < total % n)  # noqa: E731
        self.by_model = {name: [Engine(art, self._deliver, self.sessions, share(config.max_batch, i),
                                       share(config.max_queue, i), config.prefill_chunk, self.metrics,
                                       name=f"{name}-{i}") for i in range(n)]
                         for name, art in lms.items()}
        self.engines = [e for group in self.by_model.values() for e in group]
        self.metrics.bind(self.engines, self.sessions)
        self.started = time.time()
        self.loop: asyncio.AbstractEventLoop | None = None

    # engine thread -> event loop, once per step
    def _deliver(self, events) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(_dispatch, events)
        except RuntimeError:
            pass  # loop closed during shutdown

    def pace(self) -> float:
        """Seconds an SSE writer rests between writes: 0.25 ms per active stream, at most 25 ms."""
        return min(0.025, 0.00025 * sum(len(e.active) for e in self.engines))

    def healthy(self) -> bool:
        now = time.monotonic()
        return all(e.alive() and now - e.heartbeat < 10 for e in self.engines)

    def start(self) -> None:
        if self.config.sessions_file:
            self.load_sessions()
        for e in self.engines:
            e.start()

    def shutdown(self, reason: str = "shutdown") -> None:
        for e in self.engines:
            e.shutdown(reason)
        if self.config.sessions_file:
            try:
                n = self.sessions.save(self.config.sessions_file)
                log.info(json.dumps({"event": "sessions_saved", "path": self.config.sessions_file, "sessions": n}))
            except OSError as e:
                log.error(json.dumps({"event": "sessions_save_failed", "error": str(e)}))

    def load_sessions(self) -> None:
        path = Path(self.config.sessions_file)
        if not path.exists():
            return
        shapes = {name: [(a.manifest["layers"], a.manifest["hidden"])] * (2 if a.is_lstm else 1)
                  for name, a in self.lms.items()}
        try:
            n = self.sessions.load(path, shapes)
            log.info(json.dumps({"event": "sessions_loaded", "path": str(path), "sessions": n}))
        except Exception as e:  # a corrupt or foreign file is set aside, never a crash
            aside = path.with_name(path.name + f".bad-{int(time.time())}")
            path.rename(aside)
            log.error(json.dumps({"event": "sessions_file_rejected", "path": str(path), "moved_to": str(aside),
                                  "error": f"{type(e).__name__}: {e}"}))

    # -- helpers -----------------------------------------------------------------------
    def lm_name(self, name: str | None) -> str:
        if not self.lms:
            raise RequestError(404, "no language model is served", "model", "model_not_found")
        if name is None:
            return next(iter(self.lms))
        if name not in self.lms:
            raise RequestError(404, f"unknown model {name!r} (language models served: {', '.join(self.lms)})",
                               "model", "model_not_found")
        return name

    def submit(self, model: str, prompt: str, max_tokens: int, sampling: schemas.SamplingFields, top_k: int,
               stop: list[str], session_id: str | None) -> GenRequest:
        self.loop = self.loop or asyncio.get_running_loop()
        art = self.lms[model]
        session = None
        if session_id is not None:
            try:
                session = self.sessions.acquire(session_id, model)
            except SessionError as e:
                raise RequestError(e.status, e.message, "session_id",
                                   {404: "session_not_found", 409: "session_busy"}.get(e.status, "invalid_request"))
        req = GenRequest(prompt_ids=art.tokenizer.encode(prompt), max_tokens=max_tokens,
                         params=SamplingParams(sampling.temperature, top_k, sampling.top_p, sampling.seed),
                         stop=stop, session=session)
        req.handle = Channel()
        try:
            max(self.by_model[model], key=lambda e: e.free()).submit(req)
        except Overloaded as e:
            if session is not None:
                self.sessions.release(session)
            raise RequestError(503, f"server busy: {e}; retry shortly", None, "overloaded", {"Retry-After": "1"})
        return req


class Channel:
    """One request's events on the event loop: the step's hand-off appends, the writer takes them all.
    (An asyncio.Queue does the same with more work per token: this is the per-token hot path.)"""
    __slots__ = ("items", "waiter")

    def __init__(self):
        self.items: list[dict] = []
        self.waiter: asyncio.Future | None = None

    def put(self, ev: dict) -> None:
        self.items.append(ev)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def take(self) -> list[dict]:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        items, self.items = self.items, []
        return items


def _dispatch(events) -> None:
    for req, ev in events:
        req.handle.put(ev)


async def _next_events(req: GenRequest) -> list[dict]:
    """Wait for at least one event, then take everything that has piled up."""
    return await req.handle.take()


def _coalesce(events: list[dict]):
    """Merge consecutive text events into one piece; pass the final event through."""
    text = []
    for ev in events:
        if ev["type"] == "text":
            text.append(ev["text"])
        else:
            if text:
                yield {"type": "text", "text": "".join(text)}
                text = []
            yield ev
    if text:
        yield {"type": "text", "text": "".join(text)}


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def stream_events(req: GenRequest, render, pace=lambda: 0.0):
    """SSE body: render(event) -> dict or None. Cancels the request if the client goes away.

    After each write the writer rests `pace()` seconds (0.25 ms per active stream, at most 25 ms) and
    then sends everything that arrived meanwhile as one event: with many streams this turns one
    write per token into one write per stream every few milliseconds, which is what keeps the HTTP
    side from eating the CPU the model needs. The first piece is never held back."""
    done = False
    try:
        while not done:
            for ev in _coalesce(await _next_events(req)):
                if ev["type"] != "text":
                    done = True
                out = render(ev)
                if out is not None:
                    yield _sse(out)
            if not done:
                await asyncio.sleep(pace())
        yield b"data: [DONE]\n\n"
    finally:
        if not done:
            req.cancel()


async def collect(req: GenRequest, request: Request) -> dict:
    """Wait for the final event of a non-streaming request; cancel it if the client goes away."""
    try:
        while True:
            try:
                events = await asyncio.wait_for(_next_events(req), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    req.cancel()
                    return {}
                continue
            for ev in events:
                if ev["type"] != "text":
                    return ev
    except asyncio.CancelledError:
        req.cancel()
        raise


def _final_body(ev: dict) -> dict:
    return {k: ev[k] for k in ("finish_reason", "text", "usage", "session_id")}


def register_routes(server: ls.LitServer, svc: Service) -> None:
    app = server.app

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(schemas.validation_error(exc.errors()))

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return error_response(exc)

    async def body(request: Request, model):
        return schemas.parse(model, await request.body())

    async def generate(request: Request):
        g: GenerateRequest = await body(request, GenerateRequest)
        model = svc.lm_name(g.model)
        req = svc.submit(model, g.prompt, g.max_tokens, g, g.top_k, g.stop, g.session_id)
        if not g.stream:
            ev = await collect(req, request)
            if ev.get("type") == "error":
                raise RequestError(ev["status"], ev["message"], None, "inference_error", {"Retry-After": "1"})
            return JSONResponse(_final_body(ev))
        index = 0

        def render(ev):
            nonlocal index
            if ev["type"] == "text":
                index += 1
                return {"text": ev["text"], "index": index - 1}
            if ev["type"] == "error":
                return {"error": {"type": "inference_error", "message": ev["message"], "field": None}}
            return _final_body(ev)

        return StreamingResponse(stream_events(req, render, svc.pace), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def completions(request: Request):
        c: CompletionRequest = await body(request, CompletionRequest)
        model = svc.lm_name(c.model)
        req = svc.submit(model, c.prompt, c.max_tokens, c, 0, c.stop, None)
        cid, created = "cmpl-" + uuid.uuid4().hex[:24], int(time.time())
        prefix = c.prompt if c.echo else ""

        def chunk(text, finish=None, usage=None):
            out = {"id": cid, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
            if usage is not None:
                out["usage"] = usage
            return out

        def usage_of(ev):
            u = ev["usage"]
            return {**u, "total_tokens": u["prompt_tokens"] + u["completion_tokens"]}

        if not c.stream:
            ev = await collect(req, request)
            if ev.get("type") == "error":
                raise RequestError(ev["status"], ev["message"], None, "inference_error", {"Retry-After": "1"})
            return JSONResponse(chunk(prefix + ev["text"], ev["finish_reason"], usage_of(ev)))
        sent_prefix = False

        def render(ev):
            nonlocal sent_prefix
            if ev["type"] == "text":
                text = ev["text"] if sent_prefix or not prefix else prefix + ev["text"]
                sent_prefix = True
                return chunk(text)
            if ev["type"] == "error":
                return {"error": {"type": "inference_error", "message": ev["message"]}}
            return chunk("", ev["finish_reason"], usage_of(ev))

        return StreamingResponse(stream_events(req, render, svc.pace), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def models(request: Request):
        created = int(svc.started)
        return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "rnnserve"}
                                           for n in list(svc.lms) + list(svc.classifiers)]}

    async def create_session(request: Request):
        raw = await request.body()
        s: SessionCreate = schemas.parse(SessionCreate, raw or b"{}")
        model = svc.lm_name(s.model)
        try:
            sess = svc.sessions.create(model, svc.lms[model].state_bytes)
        except SessionError as e:
            raise RequestError(503, e.message, None, "overloaded", {"Retry-After": "1"})
        return JSONResponse({"session_id": sess.id, "model": model, "expires_in": svc.sessions.ttl},
                            status_code=201)

    async def delete_session(session_id: str):
        try:
            svc.sessions.delete(session_id)
        except SessionError as e:
            raise RequestError(e.status, e.message, "session_id", "session_not_found")
        return Response(status_code=204)

    async def info(request: Request):
        c = svc.config
        return {
            "models": {n: a.info() for n, a in {**svc.lms, **svc.classifiers}.items()},
            "limits": {"max_prompt_chars": MAX_PROMPT_CHARS, "max_tokens": MAX_TOKENS, "max_stop": MAX_STOP,
                       "max_texts": MAX_TEXTS, "max_text_chars": MAX_TEXT_CHARS, "max_body_bytes": c.max_body_bytes,
                       "max_batch": c.max_batch, "max_queue": c.max_queue,
                       "classify_max_batch": c.classify_max_batch, "classify_wait_ms": c.classify_wait_ms},
            "sessions": {**svc.sessions.stats(), "ttl_seconds": svc.sessions.ttl,
                         "max_sessions": svc.sessions.max_sessions, "max_bytes": svc.sessions.max_bytes,
                         "bytes_per_session": {n: a.state_bytes for n, a in svc.lms.items()}},
            "engine": {n: {"active": sum(len(e.active) for e in group), "queued": sum(e.queued for e in group),
                           "threads": len(group)} for n, group in svc.by_model.items()},
        }

    async def metrics(request: Request):
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def body_doc(model):  # bodies are parsed by hand (for 400 vs 422); document them in OpenAPI all the same
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schema.pop("$defs", None)
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

    app.add_api_route("/generate", generate, methods=["POST"], openapi_extra=body_doc(GenerateRequest),
                      summary="Generate text (SSE stream, or one JSON object with stream=false)")
    app.add_api_route("/v1/completions", completions, methods=["POST"], openapi_extra=body_doc(CompletionRequest),
                      summary="OpenAI-compatible completions")
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/sessions", create_session, methods=["POST"], status_code=201,
                      openapi_extra=body_doc(SessionCreate), summary="Create a session that keeps the RNN state")
    app.add_api_route("/sessions/{session_id}", delete_session, methods=["DELETE"], status_code=204)
    app.add_api_route("/info", info, methods=["GET"])  # replaces LitServe's own /info (registered first wins)
    app.add_api_route("/metrics", metrics, methods=["GET"])


# ----------------------------------------------------------------------------- middleware


class EdgeMiddleware:
    """Body-size limit, content type, API key, request metrics and one log line per request (pure ASGI,
    so streamed responses pass straight through)."""

    JSON_POSTS = ("/generate", "/classify", "/v1/completions", "/sessions")
    OPEN = ("/health",)

    def __init__(self, app, svc: Service):
        self.app, self.svc = app, svc

    async def _reject(self, send, status: int, message: str, kind: str, field=None, headers=None):
        body = json.dumps({"error": {"type": kind, "message": message, "field": field}}).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status = {"code": 500}
        endpoint = path if path in ("/generate", "/classify", "/v1/completions", "/v1/models", "/sessions", "/info",
                                    "/metrics", "/health") else ("/sessions/{id}" if path.startswith("/sessions/")
                                                                 else "other")

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        limit = self.svc.config.max_body_bytes
        try:
            key = self.svc.config.api_key
            if key and path not in self.OPEN:
                auth = headers.get("authorization", "")
                given = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
                if given != key:
                    return await self._reject(send_wrapper, 401, "missing or wrong API key (send Authorization: "
                                              "Bearer KEY or X-API-Key: KEY)", "unauthorized")
            if method == "POST" and path in self.JSON_POSTS:
                ctype = headers.get("content-type", "application/json").split(";")[0].strip().lower()
                if ctype != "application/json":
                    return await self._reject(send_wrapper, 415, f"content type must be application/json, not "
                                              f"{ctype!r}", "unsupported_media_type", "content-type")
                length = headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    return await self._reject(send_wrapper, 413, f"body of {int(length)} bytes is larger than the "
                                              f"limit of {limit} bytes", "body_too_large", "body")
                # a chunked body without a length: read it here, counting, and replay it
                chunks, size = [], 0
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return await self._reject(send_wrapper, 413, f"body is larger than the limit of {limit} "
                                                  "bytes", "body_too_large", "body")
                    chunks.append(chunk)
                    more = message.get("more_body", False)
                body = b"".join(chunks)
                sent = False

                async def replay():
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                return await self.app(scope, replay, send_wrapper)
            return await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - t0
            m = self.svc.metrics
            m.requests.labels(endpoint, str(status["code"])).inc()
            m.request_seconds.labels(endpoint).observe(seconds)
            if path not in ("/health", "/metrics"):
                log.info(json.dumps({"method": method, "path": path, "status": status["code"],
                                     "ms": round(seconds * 1000, 1)}))


# ----------------------------------------------------------------------------- start-up


def build(config: Config) -> tuple[ls.LitServer, Service]:
    paths = resolve_models(config)
    threads = config.threads or None
    # several engine threads per model each run the session on their own core: one intra-op thread each
    lm_threads = config.threads or (1 if engine_threads(config) > 1 else None)
    lms, classifiers = {}, {}
    for name, path in paths.items():
        m = read_manifest(path)
        art = load_artifact(path, name, int8=config.int8 and bool(m.get("int8")),
                            threads=lm_threads if m.get("kind") == "lm" else threads)
        (lms if art.kind == "lm" else classifiers)[name] = art
    schemas.SERVED_CLASSIFIERS[:] = list(classifiers)
    svc = Service(config, lms, classifiers)
    _HEALTH["check"] = svc.healthy
    fault_at = os.environ.get("RNNSERVE_INJECT_FAULT_AT_STEP")
    if fault_at:  # a testing aid: make one decode step fail, as a broken model or runtime would
        for group in svc.by_model.values():
            hook = _fault_at(int(fault_at))  # one count per model, shared by its engine threads
            for engine in group:
                engine.fault_hook = hook
    spec = ClassifySpec(config.classify_max_batch, config.classify_wait_ms / 1000, metrics=svc.metrics)
    api = ClassifyAPI({n: str(a.path) for n, a in classifiers.items()}, config.threads, config.int8, spec)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60,
                          info_path="/litserve/info", middlewares=[(EdgeMiddleware, {"svc": svc})])
    register_routes(server, svc)
    return server, svc


def _fault_at(n: int):
    calls = {"n": 0}
    lock = threading.Lock()

    def hook():
        with lock:
            calls["n"] += 1
            hit = calls["n"] == n
        if hit:
            raise RuntimeError(f"fault injected at step {n} (RNNSERVE_INJECT_FAULT_AT_STEP)")
    return hook


def serve(config: Config) -> None:
    logging.basicConfig(level=config.log_level.upper(), format="%(message)s")
    # The engine thread and the event loop share the GIL; with the default 5 ms switch interval
    # every socket write of the loop can wait 5 ms for the GIL while a step runs Python.
    sys.setswitchinterval(0.0001)
    server, svc = build(config)
    # Every token makes a few short-lived objects, freed by reference counting; the cyclic collector's
    # default (a young-generation pass every 700 allocations, walking everything alive) then runs
    # hundreds of times a second for nothing. Freeze what start-up made and collect less often:
    # 64 streams, interleaved runs, 74.7/76.4/81.1k -> 83.9/83.1/84.5k tokens/s.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 50, 100)
    svc.start()
    stopping = threading.Event()
    main_pid = os.getpid()

    def on_term(signum, frame):
        if os.getpid() != main_pid:  # a forked helper (LitServe's manager) inherits this handler
            return
        if stopping.is_set():
            return
        stopping.set()
        log.info(json.dumps({"event": "shutdown", "signal": signum}))

        def finish():
            svc.shutdown("shutdown")
            time.sleep(0.5)  # let the final events reach the clients
            server._shutdown_event.set()
        threading.Thread(target=finish, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info(json.dumps({"event": "start", "host": config.host, "port": config.port,
                         "language_models": list(svc.lms), "classifiers": list(svc.classifiers)}))
    code = 0
    try:
        server.run(host=config.host, port=config.port, num_api_servers=1, api_server_worker_type="thread",
                   generate_client_file=False, log_level="warning")
    except SystemExit as e:  # uvicorn exits this way when it cannot bind the port
        code = e.code if isinstance(e.code, int) else 1
    except Exception:  # os._exit below would swallow the traceback: log it first
        log.exception("server failed")
        code = 1
    finally:
        if not stopping.is_set():
            svc.shutdown("shutdown")
        log.info(json.dumps({"event": "stopped"}))
        logging.shutdown()
        # LitServe ends its worker processes but cannot stop a uvicorn *thread*; leave now.
        os._exit(code)
