"""The generation engine: continuous batching of RNN decoding, without a server.

One engine serves one language-model artifact from one thread:

- *admit*: requests wait in the inbox until a slot of the running batch is free;
- *prefill*: a request's prompt is run through at time = chunk length, several
  requests of equal chunk length in one call, in chunks so that a long prompt
  never stalls the running streams for long;
- *step*: every active slot advances one token in one ONNX Runtime call at
  time = 1, the batch's state living in one (layers, batch, hidden) array per
  state tensor that ORT hands back each step;
- *sample*: one vectorised call over the batch (sampler.py);
- *retire*: a finished, stopped or cancelled row leaves the batch at once, its
  state going back to its session, if any.

A row's state has consumed everything except its `next_token`: the last
prompt or generated token, fed at the next step. That is also what a session
keeps, so continuing a session recomputes nothing and an empty prompt simply
continues the text.

Events for the HTTP layer are collected over a step and handed to `deliver`
in one call (one cross-thread wake-up per step, not per token).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .artifact import Artifact, zero_state
from .sampler import SamplingParams, sample
from .sessions import Session, SessionStore

log = logging.getLogger("rnnserve.engine")


class Overloaded(Exception):
    """The queue is full: the HTTP layer answers 503 with Retry-After."""


@dataclass
class Request:
    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    stop: list[str] = field(default_factory=list)
    session: Session | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    handle: object = None  # opaque to the engine: the HTTP layer's per-request channel
    # runtime, owned by the engine thread
    feed: list[int] = field(default_factory=list)
    cursor: int = 0
    state: list[np.ndarray] | None = None
    next_token: int = 0
    generated: int = 0
    text: str = ""
    sent: int = 0
    stop_scan: int = 0
    cancelled: bool = False
    released: bool = False
    t_arrival: float = field(default_factory=time.perf_counter)
    t_first: float | None = None

    def cancel(self) -> None:
        self.cancelled = True


class Metrics:
    """What the engine reports; the HTTP layer plugs in Prometheus (service/metrics.py)."""

    def step(self, batch: int, seconds: float) -> None: ...
    def prefill(self, rows: int, tokens: int, seconds: float) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def inter_token(self, seconds: float, count: int) -> None: ...
    def tokens(self, n: int) -> None: ...
    def finished(self, reason: str) -> None: ...


class Engine:
    def __init__(self, artifact: Artifact, deliver: Callable[[list[tuple[Request, dict]]], None],
                 sessions: SessionStore | None = None, max_batch: int = 128, max_queue: int = 256,
                 prefill_chunk: int = 256, metrics: Metrics | None = None, name: str | None = None):
        if artifact.kind != "lm":
            raise ValueError(f"{artifact.name}: the generation engine needs a language model")
        self.art = artifact
        self.name = name or artifact.name
        self.deliver = deliver
        self.sessions = sessions
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.metrics = metrics or Metrics()
        self.names = artifact.manifest["inputs"]
        bos = artifact.manifest.get("bos_text") or "\n"
        self.bos_ids = artifact.tokenizer.encode(bos) or [artifact.tokenizer.unk_id]
        self.piece = artifact.tokenizer.piece
        self._inbox: deque[Request] = deque()
        self._cv = threading.Condition()
        self.prefilling: list[Request] = []
        self.active: list[Request] = []
        self.state: list[np.ndarray] = zero_state(artifact, 0)
        self._params_dirty = True
        self._running = False
        self._draining: str | None = None
        self._thread: threading.Thread | None = None
        self.heartbeat = time.monotonic()
        self.fault_hook: Callable[[], None] | None = None  # tests inject step failures here
        self._last_step_end: float | None = None

    # ------------------------------------------------------------------ public, any thread
    def start(self) -> "Engine":
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued(self) -> int:
        return len(self._inbox) + len(self.prefilling)

    def load(self) -> int:
        return len(self._inbox) + len(self.prefilling) + len(self.active)

    def free(self) -> int:
        """Requests this engine can still take: free slots first, then queue places."""
        return self.max_batch + self.max_queue - self.load()

    def submit(self, req: Request) -> Request:
        with self._cv:
            if not self._running or self._draining:
                raise Overloaded("the engine is shutting down")
            if self.load() >= self.max_batch + self.max_queue:
                raise Overloaded(f"{self.load()} requests in flight (limit {self.max_batch} running + "
                                 f"{self.max_queue} queued)")
            self._inbox.append(req)
            self._cv.notify()
        return req

    def shutdown(self, reason: str = "shutdown", timeout: float = 10.0) -> None:
        """Stop taking requests, end every request in flight with a final event (finish_reason
        `reason`, sessions keeping the state reached), and stop the thread."""
        with self._cv:
            self._draining = reason
            self._cv.notify()
        if self._thread:
            self._thread.join(timeout)

    def _drain(self) -> None:
        events = []
        for r in self._inbox:
            self._release_session(r, keep=False)
            events.append((r, self._final(r, self._draining)))
        self._inbox.clear()
        for r in self.prefilling:
            self._release_session(r, keep=False)
            events.append((r, self._final(r, self._draining)))
        for i, r in enumerate(self.active):
            self._release_session(r, keep=True, row=i)
            piece = self._emittable(r, final=True)
            if piece:
                events.append((r, {"type": "text", "text": piece}))
            events.append((r, self._final(r, self._draining)))
        self.prefilling, self.active = [], []
        self.state = zero_state(self.art, 0)
        if events:
            self.deliver(events)

    # ------------------------------------------------------------------ engine thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._running and not self._draining and not (self._inbox or self.prefilling or self.active):
                    self._last_step_end = None
                    self._cv.wait(timeout=1.0)  # idle: sleep, do not spin
                    self.heartbeat = time.monotonic()
                if self._draining:
                    self._running = False
                    self._drain()
                    return
                if not self._running:
                    return
                while self._inbox and len(self.prefilling) + len(self.active) < self.max_batch:
                    self.prefilling.append(self._start(self._inbox.popleft()))
            self.heartbeat = time.monotonic()
            events: list[tuple[Request, dict]] = []
            try:
                if self.fault_hook:
                    self.fault_hook()
                self._drop_cancelled()
                self._prefill_some()
                self._step(events)
            except Exception as e:  # a failed step ends the affected requests, never the engine
                log.exception("engine step failed")
                events += self._fail_all(e)
            if events:
                self.deliver(events)

    def _start(self, r: Request) -> Request:
        s = r.session
        if s is not None and s.state is not None:
            r.state = [a[:, None, :].copy() for a in s.state]
            r.feed = [s.last_token] + r.prompt_ids
        else:
            r.state = zero_state(self.art, 1)
            r.feed = self.bos_ids + r.prompt_ids
        r.cursor = 0
        return r

    def _drop_cancelled(self) -> None:
        if any(r.cancelled for r in self.prefilling):
            for r in [r for r in self.prefilling if r.cancelled]:
                self._release_session(r, keep=False)
            self.prefilling = [r for r in self.prefilling if not r.cancelled]
        if any(r.cancelled for r in self.active):
            keep = np.array([not r.cancelled for r in self.active])
            for i, r in enumerate(self.active):
                if r.cancelled:
                    self._release_session(r, keep=True, row=i)
                    self.metrics.finished("cancelled")
            self._retire(keep)

    def _prefill_some(self) -> None:
        """Run one chunk of every prompt still being read, grouped by chunk length."""
        if not self.prefilling:
            return
        groups: dict[int, list[Request]] = {}
        for r in self.prefilling:
            todo = len(r.feed) - 1 - r.cursor  # the last token is left for the decode step
            if todo > 0:
                groups.setdefault(min(todo, self.prefill_chunk), []).append(r)
        for n, rows in groups.items():
            t0 = time.perf_counter()
            tokens = np.array([r.feed[r.cursor:r.cursor + n] for r in rows], dtype=np.int64)
            state = [np.concatenate([r.state[k] for r in rows], axis=1) for k in range(len(rows[0].state))]
            out = self.art.session.run(None, {"tokens": tokens, **dict(zip(self.names[1:], state))})
            for i, r in enumerate(rows):
                r.state = [o[:, i:i + 1, :] for o in out[1:]]
                r.cursor += n
            self.metrics.prefill(len(rows), tokens.size, time.perf_counter() - t0)
        ready = [r for r in self.prefilling if r.cursor >= len(r.feed) - 1]
        if ready:
            self.prefilling = [r for r in self.prefilling if r.cursor < len(r.feed) - 1]
            for r in ready:
                r.next_token = r.feed[-1]
            self.state = [np.concatenate([s] + [r.state[k] for r in ready], axis=1)
                          for k, s in enumerate(self.state)]
            for r in ready:
                r.state = None
            self.active += ready
            self._params_dirty = True

    def _batch_params(self):
        if self._params_dirty:
            self._temp = np.array([r.params.temperature for r in self.active], dtype=np.float32)
            self._topk = np.array([r.params.top_k for r in self.active], dtype=np.int64)
            self._topp = np.array([r.params.top_p for r in self.active], dtype=np.float32)
            self._params_dirty = False
        return self._temp, self._topk, self._topp

    def _step(self, events: list) -> None:
        if not self.active:
            return
        t0 = time.perf_counter()
        batch = len(self.active)
        tokens = np.fromiter((r.next_token for r in self.active), dtype=np.int64, count=batch)[:, None]
        out = self.art.session.run(None, {"tokens": tokens, **dict(zip(self.names[1:], self.state))})
        self.state = out[1:]
        temp, topk, topp = self._batch_params()
        uniforms = np.fromiter((r.params.rng.random() for r in self.active), dtype=np.float64, count=batch)
        new = sample(out[0][:, 0, :], temp, topk, topp, uniforms).tolist()
        now = time.perf_counter()
        self.metrics.step(batch, now - t0)
        keep = None
        firsts = 0
        piece_of = self.piece
        for i, (r, tok) in enumerate(zip(self.active, new)):
            r.next_token = tok
            r.generated += 1
            if r.t_first is None:
                r.t_first = now
                firsts += 1
                self.metrics.first_token(now - r.t_arrival)
            if r.stop:
                r.text += piece_of(tok)
                reason = self._check_stop(r)
                if reason is None and r.generated >= r.max_tokens:
                    reason = "length"
                piece = self._emittable(r, final=reason is not None)
            else:  # the common case, kept short: nothing to hold back
                piece = piece_of(tok)
                r.text += piece
                r.sent = len(r.text)
                reason = "length" if r.generated >= r.max_tokens else None
            if piece:
                events.append((r, {"type": "text", "text": piece}))
            if reason is not None:
                self._release_session(r, keep=True, row=i)
                events.append((r, self._final(r, reason)))
                self.metrics.finished(reason)
                if keep is None:
                    keep = np.ones(batch, dtype=bool)
                keep[i] = False
        self.metrics.tokens(batch)
        if self._last_step_end is not None and batch > firsts:
            self.metrics.inter_token(now - self._last_step_end, batch - firsts)
        self._last_step_end = now
        if keep is not None:
            self._retire(keep)

    def _check_stop(self, r: Request) -> str | None:
        if not r.stop:
            return None
        longest = max(len(s) for s in r.stop)
        start = max(0, r.stop_scan - longest + 1)
        hits = [i for i in (r.text.find(s, start) for s in r.stop) if i >= 0]
        r.stop_scan = len(r.text)
        if hits:
            r.text = r.text[: min(hits)]
            return "stop"
        return None

    def _emittable(self, r: Request, final: bool) -> str:
        """New text that can be sent: hold back a tail that could still grow into a stop string."""
        end = len(r.text)
        if not final and r.stop:
            for hold in range(min(max(len(s) for s in r.stop) - 1, end - r.sent), 0, -1):
                tail = r.text[end - hold:]
                if any(s.startswith(tail) for s in r.stop):
                    end -= hold
                    break
        piece = r.text[r.sent:end]
        r.sent = end
        return piece

    def _final(self, r: Request, reason: str) -> dict:
        return {"type": "done", "finish_reason": reason, "text": r.text,
                "usage": {"prompt_tokens": len(r.prompt_ids), "completion_tokens": r.generated},
                "session_id": r.session.id if r.session else None}

    def _retire(self, keep: np.ndarray) -> None:
        self.active = [r for r, k in zip(self.active, keep) if k]
        self.state = [np.ascontiguousarray(s[:, keep, :]) for s in self.state]
        self._params_dirty = True

    def _release_session(self, r: Request, keep: bool, row: int | None = None) -> None:
        """Hand the session back: with the row's state when `keep`, untouched otherwise."""
        s = r.session
        if s is None or r.released or self.sessions is None:
            return
        r.released = True
        if keep and row is not None:
            state = [np.ascontiguousarray(a[:, row, :]) for a in self.state]
            self.sessions.release(s, state, r.next_token, fed=len(r.feed) - 1 + r.generated)
        else:
            self.sessions.release(s)

    def _fail_all(self, e: Exception) -> list[tuple[Request, dict]]:
        rows = self.prefilling + self.active
        self.prefilling, self.active = [], []
        self.state = zero_state(self.art, 0)
        self._params_dirty = True
        events = []
        for r in rows:
            self._release_session(r, keep=False)
            events.append((r, {"type": "error", "status": 503,
                               "message": f"inference failed on this step ({type(e).__name__}); retry the request"}))
            self.metrics.finished("error")
        return events
