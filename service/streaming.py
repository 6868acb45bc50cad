"""Engine events -> HTTP bodies: SSE streams and whole JSON answers, for /generate and /v1/completions.

An encoder turns the three events (Text, Done, Failed) into one endpoint's JSON objects; `sse` writes
a stream of them, `whole` waits for the final event and answers once. Both cancel the request when the
client goes away, so the engine frees its slot within a step.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .requests import Done, Event, Failed, GenerationRequest, Text
from .errors import RequestError, error_body

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE_LINE = b"data: [DONE]\n\n"


def failed_error(ev: Failed) -> RequestError:
    return RequestError(503, ev.message, ev.field, ev.kind, {"Retry-After": "1"})


class GenerateEncoder:
    """POST /generate: `{"text", "index"}` pieces, then `{"finish_reason", "text", "usage", "session_id"}`."""

    def __init__(self, session_id: str | None):
        self.session_id, self.index = session_id, 0

    def text(self, piece: str) -> dict:
        self.index += 1
        return {"text": piece, "index": self.index - 1}

    def done(self, ev: Done) -> dict:
        return {"finish_reason": ev.finish_reason, "text": ev.text,
                "usage": {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens},
                "session_id": self.session_id}

    whole = done


class CompletionEncoder:
    """POST /v1/completions: OpenAI's text_completion chunks (the prompt first when `echo`)."""

    def __init__(self, model: str, echo_prefix: str = ""):
        self.model, self.prefix = model, echo_prefix
        self.id, self.created = "cmpl-" + uuid.uuid4().hex[:24], int(time.time())

    def _chunk(self, text: str, finish: str | None = None, usage: dict | None = None) -> dict:
        out = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
               "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
        if usage is not None:
            out["usage"] = usage
        return out

    @staticmethod
    def _usage(ev: Done) -> dict:
        return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
                "total_tokens": ev.prompt_tokens + ev.completion_tokens}

    def text(self, piece: str) -> dict:
        piece, self.prefix = self.prefix + piece, ""
        return self._chunk(piece)

    def done(self, ev: Done) -> dict:
        return self._chunk("", ev.finish_reason, self._usage(ev))

    def whole(self, ev: Done) -> dict:
        return self._chunk(self.prefix + ev.text, ev.finish_reason, self._usage(ev))


def _coalesce(events: list[Event]):
    """Merge consecutive text events into one piece; pass the final event through."""
    text = []
    for ev in events:
        if type(ev) is Text:
            text.append(ev.text)
            continue
        if text:
            yield Text("".join(text))
            text = []
        yield ev
    if text:
        yield Text("".join(text))


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def _sse_body(req: GenerationRequest, encoder, pace):
    """After each write the writer rests `pace()` seconds (0.25 ms per active stream, at most 25 ms) and
    then sends everything that arrived meanwhile as one event: with many streams this turns one write
    per token into one write per stream every few milliseconds, which keeps the HTTP side from eating
    the CPU the model needs. The first piece is never held back."""
    done = False
    try:
        while not done:
            events = await req.reply.take()
            if req.reply.overflowed:  # the client fell too far behind: the request is cancelled, end it here
                done = True
                yield _sse(error_body("client_too_slow", "the client did not read the stream fast enough; "
                                                         "the generation was cancelled"))
                break
            for ev in _coalesce(events):
                if type(ev) is Text:
                    yield _sse(encoder.text(ev.text))
                    continue
                done = True
                yield _sse(encoder.done(ev) if type(ev) is Done else error_body(ev.kind, ev.message, ev.field))
            if not done:
                await asyncio.sleep(pace())
        yield DONE_LINE
    finally:
        if not done:
            req.cancel()  # the client went away (Starlette cancelled the response)


def sse(req: GenerationRequest, encoder, pace=lambda: 0.0) -> StreamingResponse:
    return StreamingResponse(_sse_body(req, encoder, pace), media_type="text/event-stream", headers=SSE_HEADERS)


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read: nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(fut: asyncio.Future, request: Request):
    """The future's result, or — when the client closes the connection first — the future cancelled and a
    499 (logged; nobody is left to read it)."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({fut, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not fut.done():
            fut.cancel()
            raise RequestError(499, "the client closed the connection before the answer", None, "client_closed")
        return fut.result()
    finally:
        gone.cancel()
        if not fut.done():
            fut.cancel()


async def whole(req: GenerationRequest, encoder, request: Request):
    """Wait for the final event and answer it as one JSON object. A client that goes away cancels the
    request at once (the engine drops it before its next step)."""
    final = asyncio.ensure_future(req.reply.take())  # a final-only channel: one wake-up, the final event
    try:
        ev = (await unless_gone(final, request))[-1]
    except BaseException:  # the client left (499), or the handler was cancelled
        req.cancel()
        raise
    if type(ev) is Failed:
        raise failed_error(ev)
    return JSONResponse(encoder.whole(ev))
