"""Engine events -> HTTP bodies: SSE streams and whole JSON answers, for /generate, /v1/completions and
/v1/chat/completions.

An encoder turns the three events (Text, Done, Failed) into one endpoint's JSON objects; `sse` writes
a stream of them, `whole` waits for every choice's final event and answers once. Both cancel the requests
when the client goes away, so the engine frees their slots within a step.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .requests import Done, Event, Failed, GenerationRequest, Text
from .errors import RequestError, error_body

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE_LINE = b"data: [DONE]\n\n"


def failed_error(ev: Failed) -> RequestError:
    return RequestError(ev.status, ev.message, ev.field, ev.kind, {"Retry-After": "1"} if ev.status == 503 else None)


class GenerateEncoder:
    """POST /generate: `{"text", "index"}` pieces, then `{"finish_reason", "text", "usage", "session_id"}`."""

    def __init__(self, session_id: str | None):
        self.session_id, self.index = session_id, 0

    def text(self, ev: Text) -> dict:
        self.index += 1
        return {"text": ev.text, "index": self.index - 1}

    def done(self, ev: Done) -> dict:
        return {"finish_reason": ev.finish_reason, "text": ev.text,
                "usage": {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens},
                "session_id": self.session_id}

    def whole(self, finals: list[Done]) -> dict:
        return self.done(finals[0])

    def end(self) -> dict | None:
        return None


class OpenAIEncoder:
    """What the two OpenAI endpoints share: ids, the choices' finals, the usage of the whole request (prompt
    tokens once per prompt, completion tokens of every choice), and log-probabilities as token texts and
    bytes (`tokenizer.token_bytes`)."""
    kind = "?"

    def __init__(self, model: str, reqs: list[GenerationRequest], tokenizer, include_usage: bool = False):
        self.model, self.reqs, self.tok, self.include_usage = model, reqs, tokenizer, include_usage
        self.id, self.created = self.kind + "-" + uuid.uuid4().hex[:24], int(time.time())
        self.finals: list[Done] = []

    def _envelope(self, choices: list[dict], usage: dict | None = None) -> dict:
        out = {"id": self.id, "object": self.object, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out

    def usage(self, finals: list[Done]) -> dict:
        prompt = sum(len(r.prompt_ids) for r in self.reqs)
        completion = sum(ev.completion_tokens for ev in finals)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def token(self, token_id: int) -> tuple[str, list[int]]:
        b = self.tok.token_bytes(token_id)
        return b.decode("utf-8", "replace"), list(b)

    def end(self) -> dict | None:
        """The last chunk before [DONE], with `stream_options.include_usage`: the whole request's usage."""
        return self._envelope([], self.usage(self.finals)) if self.include_usage else None


class CompletionEncoder(OpenAIEncoder):
    """POST /v1/completions: OpenAI's text_completion chunks (each prompt first when `echo`); `logprobs` as
    OpenAI's legacy object (tokens, token_logprobs, top_logprobs, text_offset)."""
    kind, object = "cmpl", "text_completion"

    def __init__(self, model: str, reqs: list[GenerationRequest], tokenizer, echo: list[str] | None = None,
                 include_usage: bool = False):
        super().__init__(model, reqs, tokenizer, include_usage)
        self.n = reqs[0].n if reqs else 1
        self.echo = echo  # the prompts, when echoed
        self.echoed: set[int] = set()
        self.offset: dict[int, int] = {}

    def _prefix(self, index: int) -> str:
        """The prompt of this choice, the first time it is written (echo)."""
        if self.echo is None or index in self.echoed:
            return ""
        self.echoed.add(index)
        return self.echo[index // self.n]

    def _choice(self, index: int, text: str, logprobs, finish: str | None) -> dict:
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}

    def _logprobs(self, entries, prompt: list[float | None] | None = None, prompt_ids: list[int] | None = None,
                  start: int = 0) -> dict | None:
        if entries is None and prompt is None:
            return None
        tokens, lps, tops, offsets, pos = [], [], [], [], start
        for tid, lp in zip(prompt_ids or [], prompt or []):
            text = self.token(tid)[0]
            tokens.append(text), lps.append(lp), tops.append(None), offsets.append(pos)
            pos += len(text)
        for tid, lp, top in entries or []:
            text = self.token(tid)[0]
            tokens.append(text), lps.append(lp), offsets.append(pos)
            tops.append({self.token(t)[0]: v for t, v in top})
            pos += len(text)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    def text(self, ev: Text) -> dict:
        prefix = self._prefix(ev.index)
        start = self.offset.get(ev.index, len(prefix))
        self.offset[ev.index] = start + len(ev.text)
        lp = self._logprobs(ev.logprobs, start=start) if ev.logprobs is not None else None
        return self._envelope([self._choice(ev.index, prefix + ev.text, lp, None)])

    def done(self, ev: Done) -> dict:
        self.finals.append(ev)
        usage = {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
                 "total_tokens": ev.prompt_tokens + ev.completion_tokens}
        prefix = self._prefix(ev.index)
        lp = None
        if ev.prompt_logprobs is not None and prefix:  # a scored text: its prompt's log-probabilities
            lp = self._logprobs(None, ev.prompt_logprobs, self.reqs[ev.index // self.n].prompt_ids)
        return self._envelope([self._choice(ev.index, prefix, lp, ev.finish_reason)], usage)

    def whole(self, finals: list[Done]) -> dict:
        self.finals = finals
        choices = []
        for ev in finals:
            prompt = self.echo[ev.index // self.n] if self.echo is not None else ""
            lp = None
            if ev.logprobs is not None or ev.prompt_logprobs is not None:
                lp = self._logprobs(ev.logprobs, ev.prompt_logprobs,
                                    self.reqs[ev.index // self.n].prompt_ids if ev.prompt_logprobs else None)
            choices.append(self._choice(ev.index, prompt + ev.text, lp, ev.finish_reason))
        return self._envelope(choices, self.usage(finals))


class ChatEncoder(OpenAIEncoder):
    """POST /v1/chat/completions: chat.completion chunks (the role first, then content deltas, then the finish
    reason), or one chat.completion; `logprobs` as {"content": [{token, logprob, bytes, top_logprobs}]}."""
    kind, object = "chatcmpl", "chat.completion.chunk"

    def __init__(self, model: str, reqs: list[GenerationRequest], tokenizer, include_usage: bool = False):
        super().__init__(model, reqs, tokenizer, include_usage)
        self.started: set[int] = set()

    def _entries(self, entries) -> list[dict]:
        out = []
        for tid, lp, top in entries:
            text, b = self.token(tid)
            out.append({"token": text, "logprob": lp, "bytes": b,
                        "top_logprobs": [dict(zip(("token", "bytes"), self.token(t)), logprob=v) for t, v in top]})
        return out

    def _delta(self, index: int, content: str | None) -> dict:
        delta = {} if content is None else {"content": content}
        if index not in self.started:
            self.started.add(index)
            delta = {"role": "assistant", **({"content": content} if content is not None else {"content": ""})}
        return delta

    def text(self, ev: Text) -> dict:
        lp = {"content": self._entries(ev.logprobs)} if ev.logprobs is not None else None
        return self._envelope([{"index": ev.index, "delta": self._delta(ev.index, ev.text), "logprobs": lp,
                                "finish_reason": None}])

    def done(self, ev: Done) -> dict:
        self.finals.append(ev)
        return self._envelope([{"index": ev.index, "delta": self._delta(ev.index, None), "logprobs": None,
                                "finish_reason": ev.finish_reason}])

    def whole(self, finals: list[Done]) -> dict:
        choices = [{"index": ev.index, "message": {"role": "assistant", "content": ev.text},
                    "logprobs": {"content": self._entries(ev.logprobs)} if ev.logprobs is not None else None,
                    "finish_reason": ev.finish_reason} for ev in finals]
        return {**self._envelope(choices, self.usage(finals)), "object": "chat.completion"}


def _coalesce(events: list[Event]):
    """Merge each choice's text events into one piece (log-probabilities joined); pass final events through,
    after the text that came before them."""
    pending: dict[int, Text] = {}
    for ev in events:
        if type(ev) is Text:
            t = pending.get(ev.index)
            if t is None:
                pending[ev.index] = Text(ev.text, ev.index, list(ev.logprobs) if ev.logprobs is not None else None)
            else:
                t.text += ev.text
                if ev.logprobs:
                    t.logprobs = (t.logprobs or []) + ev.logprobs
            continue
        yield from pending.values()
        pending = {}
        yield ev
    yield from pending.values()


def _sse(obj: dict | bytes) -> bytes:
    """One SSE event of an encoder's object (an encoder that names its events writes the bytes itself)."""
    if type(obj) is bytes:
        return obj
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def _sse_body(reqs: list[GenerationRequest], encoder, pace):
    """After each write the stream's channel holds text back for `pace()` seconds (0.25 ms per active stream,
    at most 25 ms); then everything that arrived meanwhile goes out as one event per choice, all in one
    write: with many streams this turns one write per token into one write per stream every few
    milliseconds, which keeps the HTTP side from eating the CPU the model needs. The first piece and final
    events are never held back. The stream ends when every choice of every request has its final event (or
    one failed)."""
    reply = reqs[0].reply
    finals, done = 0, False
    done_line = getattr(encoder, "done_line", DONE_LINE)  # the Responses API ends without [DONE]
    try:
        while not done:
            events = await reply.take()
            if reply.overflowed:  # the client fell too far behind: the request is cancelled, end it here
                done = True
                yield _sse(error_body("client_too_slow", "the client did not read the stream fast enough; "
                                                         "the generation was cancelled"))
                break
            frames = []
            for ev in _coalesce(events):
                if type(ev) is Text:
                    frames.append(_sse(encoder.text(ev)))
                    continue
                if type(ev) is Failed:
                    done = True
                    frames.append(_sse(error_body(ev.kind, ev.message, ev.field)))
                    break
                finals += 1
                frames.append(_sse(encoder.done(ev)))
                if finals >= reply.expect:
                    done = True
                    end = encoder.end()
                    if end is not None:
                        frames.append(_sse(end))
                    frames.append(done_line)
                    break
            if frames:
                yield frames[0] if len(frames) == 1 else b"".join(frames)
            if not done:
                reply.not_before = time.monotonic() + pace()
        if (reply.overflowed or finals < reply.expect) and done_line:
            yield done_line
    finally:
        if not done or finals < reply.expect:
            for r in reqs:
                r.cancel()  # the client went away (Starlette cancelled the response), or a choice failed


class SSEResponse(Response):
    """A streamed response written from the request's own task. Starlette's StreamingResponse opens an anyio
    task group for each response (a task to write, a task to listen for the client leaving, cancel scopes
    around both); here the body is written where the request already runs and one plain task waits for the
    disconnect and cancels it. Per request that is a task and a cancel scope fewer, and per write no task-
    group bookkeeping: the HTTP side's share of a 64-stream load (docs/performance.md)."""

    media_type = "text/event-stream"

    def __init__(self, body, headers: dict):
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope, receive, send) -> None:
        task = asyncio.current_task()
        gone = False

        async def watch() -> None:
            nonlocal gone
            await _disconnected(receive)
            gone = True
            task.cancel()
        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise  # the server is stopping, not the client leaving
            task.uncancel()  # the client left: its requests are cancelled (the body's finally); nothing to answer
        except OSError:
            pass  # the connection broke under a write: the same
        finally:
            watcher.cancel()
            await self.body_iterator.aclose()


def sse(reqs: list[GenerationRequest], encoder, pace=lambda: 0.0) -> SSEResponse:
    return SSEResponse(_sse_body(reqs, encoder, pace), SSE_HEADERS)


async def _disconnected(receive) -> None:
    """Return when the client closes the connection (the body has been read: nothing else can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_gone(fut: asyncio.Future, request: Request):
    """The future's result, or — when the client closes the connection first — the future cancelled and a
    499 (logged; nobody is left to read it)."""
    gone = asyncio.ensure_future(_disconnected(request.receive))
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


async def whole(reqs: list[GenerationRequest], encoder, request: Request):
    """Wait for the final event of every choice and answer them as one JSON object. A client that goes away
    cancels the requests at once (the engine drops them before its next step)."""
    reply = reqs[0].reply
    finals: list[Done] = []

    async def collect() -> Failed | None:
        while len(finals) < reply.expect:
            for ev in await reply.take():  # a final-only channel: one wake-up per step with finals
                if type(ev) is Failed:
                    return ev
                if type(ev) is Done:
                    finals.append(ev)
        return None
    try:
        failed = await unless_gone(asyncio.ensure_future(collect()), request)
    except BaseException:  # the client left (499), or the handler was cancelled
        for r in reqs:
            r.cancel()
        raise
    if failed is not None:
        for r in reqs:
            r.cancel()
        raise failed_error(failed)
    return JSONResponse(encoder.whole(sorted(finals, key=lambda ev: ev.index)))
