"""The HTTP routes: decode the request (pydantic), hand it to the runtime or the classify batcher, encode
the answer. Nothing here generates, batches or stores."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from . import schemas, streaming
from .board import Board
from .config import (MAX_CHOICES, MAX_PROMPT_CHARS, MAX_PROMPTS, MAX_STOP, MAX_TEXT_CHARS, MAX_TEXTS, MAX_TOKENS,
                     replica_name)
from .errors import RequestError, conversation_errors
from .litserve_adapter import ClassifyBatcher
from .responses import Responses, ResponsesRequest
from .runtime import Runtime
from .chat import ChatTemplateError
from .runtime import Channel
from .schemas import ChatRequest, ClassifyRequest, CompletionRequest, GenerateRequest, SessionCreate
from .sessions import SessionError
from .tokenizer import EncodeError


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


PLAYGROUND = Path(__file__).with_name("static") / "playground.html"
# The page is self-contained: its script and styles are inline, it talks only to this server.
PLAYGROUND_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src "
                      "'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                      "frame-ancestors 'none'", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


class Routes:
    def __init__(self, runtime: Runtime, batcher: ClassifyBatcher, board: Board, ready: Callable[[], bool]):
        self.rt, self.batcher, self.board, self.ready = runtime, batcher, board, ready
        self.page = PLAYGROUND.read_bytes()
        self.responses = Responses(runtime, self._answer)

    async def playground(self, request: Request):
        """GET /: the playground page (it holds no secret: served without an API key; its calls need one)."""
        return Response(self.page, media_type="text/html; charset=utf-8", headers=PLAYGROUND_HEADERS)

    async def generate(self, request: Request):
        g: GenerateRequest = await schemas.parse_body(GenerateRequest, await request.body())
        header = request.headers.get("x-session-id")  # lets a balancer hash on it; the body's field is the same
        if header is not None:
            if g.session_id is not None and g.session_id != header:
                raise RequestError(422, "session_id: the body and the X-Session-ID header name different sessions",
                                   "session_id", "invalid_value")
            g.session_id = header
        controls = await self.rt.controls(self.rt.lm_name(g.model), g)
        req = await self.rt.submit(model=g.model, prompt=g.prompt, max_tokens=g.max_tokens,
                                   sampling=g.sampling_params(), stop=g.stop, session_id=g.session_id,
                                   stream=g.stream, controls=controls)
        return await self._answer([req], streaming.GenerateEncoder(g.session_id), g.stream, request)

    async def completions(self, request: Request):
        c: CompletionRequest = await schemas.parse_body(CompletionRequest, await request.body())
        model = self.rt.lm_name(c.model)
        scored = c.echo and c.logprobs is not None  # the prompt's own log-probabilities: a text scored
        reqs = await self._submit_all(model, c.prompts, c, max_tokens=c.max_tokens, stop=c.stop,
                                      logprobs=c.logprobs, prompt_logprobs=scored)
        encoder = streaming.CompletionEncoder(model, reqs, self.rt.lms[model].tokenizer,
                                              c.prompts if c.echo else None, c.include_usage)
        return await self._answer(reqs, encoder, c.stream, request)

    async def chat(self, request: Request):
        c: ChatRequest = await schemas.parse_body(ChatRequest, await request.body())
        model = self.rt.lm_name(c.model)
        fmt = self.rt.chat[model]
        try:
            prompt = fmt.render([m.for_template() for m in c.messages])
        except ChatTemplateError as e:
            raise RequestError(422, f"messages: {e}", "messages", "invalid_value") from None
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RequestError(422, f"messages: the conversation as the model reads it is {len(prompt):,} characters, "
                                    f"more than {MAX_PROMPT_CHARS:,}", "messages", "invalid_value")
        stop = c.stop or fmt.stop  # the template's turn ends, unless the request names its own
        with conversation_errors("messages"):
            reqs = await self._submit_all(model, [prompt], c, max_tokens=c.limit, stop=stop, logprobs=c.logprobs_top)
        encoder = streaming.ChatEncoder(model, reqs, self.rt.lms[model].tokenizer, c.include_usage)
        return await self._answer(reqs, encoder, c.stream, request)

    async def _submit_all(self, model: str, prompts: list[str], c, **kw) -> list:
        """One engine request per prompt, all answering into one reply; if one is refused, the others end."""
        reply, reqs = Channel(final_only=not c.stream), []
        controls = await self.rt.controls(model, c)
        try:
            for i, prompt in enumerate(prompts):
                reqs.append(await self.rt.submit(model=model, prompt=prompt, sampling=c.sampling_params(),
                                                 stream=c.stream, n=c.n, base=i * c.n, reply=reply,
                                                 controls=controls, **kw))
        except BaseException:
            for r in reqs:
                r.cancel()
            raise
        return reqs

    async def _answer(self, reqs: list, encoder, stream: bool, request: Request):
        if not stream:
            return await streaming.whole(reqs, encoder, request)
        return streaming.sse(reqs, encoder, self.rt.pace)

    async def classify(self, request: Request):
        c: ClassifyRequest = await schemas.parse_body(ClassifyRequest, await request.body())
        served = list(self.rt.classifiers)
        if not served:
            raise RequestError(404, "this server has no classifier loaded", "model", "not_found")
        if c.model is not None and c.model not in served:
            raise RequestError(422, f"model: unknown model {c.model!r} (classifiers served: {', '.join(served)})",
                               "model", "invalid_value")
        single = c.texts is None
        name = c.model or served[0]
        texts = [c.text] if single else c.texts
        self._encodable(name, texts, single)
        pending = self.batcher.classify(name, texts, single)
        return Response(await streaming.unless_gone(pending, request), media_type="application/json")

    def _encodable(self, model: str, texts: list[str], single: bool) -> None:
        """A vocabulary without an unknown token cannot read every text: 422 naming the text and the word, before
        anything is batched (other vocabularies read anything)."""
        tok = self.rt.classifiers[model].tokenizer
        if tok.reads_any_text:
            return
        for i, text in enumerate(texts):
            try:
                tok.encode(text)
            except EncodeError as e:
                field = "text" if single else f"texts[{i}]"
                raise RequestError(422, f"{field}: {e}", "text" if single else "texts", "invalid_value") from None

    async def models(self, request: Request):
        created = int(self.rt.started)
        return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "rnnserve"}
                                           for n in list(self.rt.lms) + list(self.rt.classifiers)]}

    async def create_session(self, request: Request):
        s: SessionCreate = schemas.parse(SessionCreate, await request.body() or b"{}")
        sid, model = await self.rt.create_session(s.model)
        return JSONResponse({"session_id": sid, "model": model, "expires_in": self.rt.store.ttl}, status_code=201)

    async def delete_session(self, session_id: str):
        await self.rt.delete_session(session_id)
        return Response(status_code=204)

    async def live(self, request: Request):
        """Liveness: the process runs and its event loop answers (nothing else is checked, so a store or a
        sibling worker being down never gets a replica killed)."""
        return PlainTextResponse("ok")

    async def health(self, request: Request):
        """200 when this worker serves (engines alive, classifier ready, not draining) and every other
        worker's heartbeat says the same; 503 naming what is not."""
        if self.rt.draining:
            return PlainTextResponse("not ready: shutting down", status_code=503)
        if not (self.rt.healthy() and self.ready()):
            return PlainTextResponse("not ready", status_code=503)
        down = [w for w in self.board.read() if not w["up"] and w["id"] != self.board.id]
        if down:
            return PlainTextResponse("not ready: " + "; ".join(f"worker {w['id']} {w['why']}" for w in down),
                                     status_code=503)
        return PlainTextResponse("ok")

    async def info(self, request: Request):
        rt, c, store = self.rt, self.rt.config, self.rt.store
        workers = [{k: w.get(k) for k in ("id", "pid", "up", "rss_mb", "active", "queued", "age_s", "why")
                    if k in w} for w in self.board.read()]
        return {
            "models": {n: a.info() for n, a in {**rt.lms, **rt.classifiers}.items()},
            "limits": {"max_prompt_chars": MAX_PROMPT_CHARS, "max_tokens": MAX_TOKENS, "max_stop": MAX_STOP,
                       "max_choices": MAX_CHOICES, "max_prompts": MAX_PROMPTS,
                       "max_texts": MAX_TEXTS, "max_text_chars": MAX_TEXT_CHARS, "max_body_bytes": c.max_body_bytes,
                       "max_batch": c.max_batch, "max_queue": c.max_queue,
                       "classify_max_batch": c.classify_max_batch, "classify_wait_ms": c.classify_wait_ms},
            "sessions": {**self._store_stats(), "ttl_seconds": store.ttl, "max_sessions": store.max_sessions,
                         "max_bytes": store.max_bytes,
                         "bytes_per_session": {n: a.state_bytes for n, a in rt.lms.items()}},
            "engine": {n: {"active": sum(len(e.active) for e in group), "queued": sum(e.queued for e in group),
                           "threads": len(group)} for n, group in rt.by_model.items()},
            "prefix_cache": rt.prefix_cache.stats(),  # this worker's
            "store": store.describe(),
            "replica": replica_name(c),
            "worker": self.board.id,
            "workers": workers,
            "memory": {"rss_mb_per_worker": [w.get("rss_mb") for w in workers],
                       "rss_mb_total": round(sum(w.get("rss_mb") or 0 for w in workers), 1)},
        }

    def _store_stats(self) -> dict:
        try:
            if not self.rt.store.describe()["up"]:
                return {"sessions": None, "bytes": None, "error": "the session store is unavailable"}
            return self.rt.store.stats()
        except SessionError as e:
            return {"sessions": None, "bytes": None, "error": e.message}

    async def metrics(self, request: Request):
        self.rt.metrics.workers_up.set(sum(w["up"] for w in self.board.read()))
        return Response(self.rt.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def direct(self) -> dict:
        """The hot POST endpoints by path, for the edge to call without FastAPI's routing and wrappers (each
        request of a burst of 64 streams costs the event loop its parse and submit, not a router's walk);
        they stay registered below for the OpenAPI schema and for any app that mounts these routes."""
        return {"/generate": self.generate, "/v1/completions": self.completions, "/v1/chat/completions": self.chat,
                "/v1/responses": self.responses.create}

    def register(self, app: FastAPI) -> None:
        app.add_exception_handler(RequestValidationError,
                                  lambda request, exc: error_response(schemas.validation_error(exc.errors())))
        app.add_exception_handler(RequestError, lambda request, exc: error_response(exc))
        add = app.add_api_route
        add("/", self.playground, methods=["GET"], include_in_schema=False)
        add("/generate", self.generate, methods=["POST"], openapi_extra=_body_doc(GenerateRequest),
            summary="Generate text (SSE stream, or one JSON object with stream=false)")
        add("/v1/completions", self.completions, methods=["POST"], openapi_extra=_body_doc(CompletionRequest),
            summary="OpenAI-compatible completions")
        add("/v1/chat/completions", self.chat, methods=["POST"], openapi_extra=_body_doc(ChatRequest),
            summary="OpenAI-compatible chat completions (the model's chat template)")
        add("/v1/responses", self.responses.create, methods=["POST"], openapi_extra=_body_doc(ResponsesRequest),
            summary="OpenAI's Responses API (previous_response_id continues the stored recurrent state)")
        add("/v1/responses/{response_id}", self.responses.get, methods=["GET"])
        add("/v1/responses/{response_id}", self.responses.delete, methods=["DELETE"])
        add("/v1/models", self.models, methods=["GET"])
        add("/classify", self.classify, methods=["POST"], openapi_extra=_body_doc(ClassifyRequest),
            summary="Classify one text or a list (concurrent requests are batched)")
        add("/sessions", self.create_session, methods=["POST"], status_code=201, openapi_extra=_body_doc(SessionCreate),
            summary="Create a session that keeps the RNN state")
        add("/sessions/{session_id}", self.delete_session, methods=["DELETE"], status_code=204)
        add("/health", self.health, methods=["GET"])
        add("/live", self.live, methods=["GET"])
        add("/info", self.info, methods=["GET"])
        add("/metrics", self.metrics, methods=["GET"])


def _body_doc(model: type[BaseModel]) -> dict:
    """Bodies are parsed by hand (for 400 vs 422); document them in OpenAPI all the same."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
