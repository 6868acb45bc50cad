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
- *retire*: a finished, stopped or cancelled row leaves the batch at once.

A row's state has consumed everything except its `next_token`: the last
prompt or generated token, fed at the next step. That pair is what a session
keeps (`SessionState`), so continuing a session recomputes nothing and an
empty prompt simply continues the text. The engine knows nothing of where
sessions are stored: a request may bring a state to start from, and a request
that asks to keep its state gets the state it reached in its final event.

Every request ends with exactly one final event (`Done` or `Failed`). Events
are collected over a step and handed to `deliver` in one call (one
cross-thread wake-up per step, not per token).

Its rooms: this file (life cycle, the loop, admission, cancellation, retirement,
failure), slot.py (a row), prefill.py (prompts read), step.py (the decode step,
text and final events), logprobs.py (log-probabilities).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from .artifact import Artifact
from .constraints import MaskBatch
from .prefix_cache import PrefixCache, root_of
from .prefill import Prefill
from .requests import Done, Event, Failed, GenerationRequest
from .slot import Slot
from .step import Step

log = logging.getLogger("rnnserve.engine")


class Overloaded(Exception):
    """The engine cannot take the request (queue full, or shutting down): the HTTP layer answers 503."""


class Metrics:
    """What the engine reports; the service plugs in Prometheus (service/metrics.py)."""

    def step(self, batch: int, seconds: float) -> None: ...
    def prefill(self, rows: int, tokens: int, seconds: float) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def inter_token(self, seconds: float, count: int) -> None: ...
    def tokens(self, n: int) -> None: ...
    def finished(self, reason: str) -> None: ...
    def prefix(self, tokens: int) -> None: ...  # a fresh request's prefix-cache lookup: tokens found (0: a miss)


Deliver = Callable[[list[tuple[GenerationRequest, Event]]], None]


class Engine(Prefill, Step):
    def __init__(self, artifact: Artifact, deliver: Deliver, max_batch: int = 128, max_queue: int = 256,
                 prefill_chunk: int = 256, metrics: Metrics | None = None, name: str | None = None,
                 cache: PrefixCache | None = None):
        if artifact.kind != "lm":
            raise ValueError(f"{artifact.name}: the generation engine needs a language model")
        self.art = artifact
        self.name = name or artifact.name
        self.deliver = deliver
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.metrics = metrics or Metrics()
        # fed before a fresh prompt (a document boundary); none for a model that starts from the prompt alone
        bos = artifact.manifest.get("bos_text", "\n")
        self.bos_ids = artifact.tokenizer.encode(bos) if bos else []
        self.stream = artifact.tokenizer.stream
        self.guard = artifact.tokenizer.utf8_guard()  # byte-level vocabularies: only valid UTF-8 is sampled
        self.pad_id = artifact.tokenizer.pad_id
        self.cache = cache if cache is not None and cache.enabled else None
        self.root = root_of(artifact.fingerprint)  # prefix-cache keys: these weights' states only
        self._inbox: deque[GenerationRequest] = deque()
        self._cv = threading.Condition()
        self.prefilling: list[Slot] = []
        self.active: list[Slot] = []
        self.state: list[np.ndarray] = artifact.zero_state(0)
        self._params_dirty = True
        self.vocab = artifact.tokenizer.vocab_size
        self._masks = MaskBatch(self.vocab)
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

    def submit(self, req: GenerationRequest) -> GenerationRequest:
        with self._cv:
            if self._thread is not None and not self._thread.is_alive():
                raise Overloaded("the engine thread has stopped")
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
        `reason`, the state reached kept for those that asked), and stop the thread."""
        with self._cv:
            self._draining = reason
            self._cv.notify()
        if self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ engine thread
    def _loop(self) -> None:
        try:
            self._run()
        except BaseException as e:  # the thread dies: nothing it holds may hang, nothing new may queue here
            log.critical("engine %s stopped: %r", self.name, e)
            with self._cv:
                self._running = False
                rows = [Slot(r, self) for r in self._inbox]
                self._inbox.clear()
                self.prefilling += rows
            self.deliver(self._fail_all(e))
            if not isinstance(e, Exception):
                raise

    def _run(self) -> None:
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
                    self.prefilling.append(Slot(self._inbox.popleft(), self))
            self.heartbeat = time.monotonic()
            events: list[tuple[GenerationRequest, Event]] = []
            try:
                if self.fault_hook:
                    self.fault_hook()
                self._drop_cancelled(events)
                self._prefill_some(events)
                self._step(events)
            except Exception as e:  # a failed step ends the affected requests, never the engine
                log.exception("engine step failed")
                events += self._fail_all(e)
            if events:
                self.deliver(events)

    def _drain(self) -> None:
        reason = self._draining
        events = [e for r in self._inbox for e in self._unstarted(r, reason)]
        events += [e for s in self.prefilling for e in self._unstarted(s.req, reason)]
        for i, s in enumerate(self.active):
            piece = s.held + self._emittable(s, final=True)
            s.held = ""
            if piece:
                events.append((s.req, self._text(s, piece)))
            events.append((s.req, self._final(s, reason, i)))
        self._inbox.clear()
        self.prefilling, self.active = [], []
        self.state = self.art.zero_state(0)
        if events:
            self.deliver(events)

    def _drop_cancelled(self, events: list) -> None:
        if any(s.req.cancelled for s in self.prefilling):
            events += [e for s in self.prefilling if s.req.cancelled for e in self._unstarted(s.req, "cancelled")]
            self.prefilling = [s for s in self.prefilling if not s.req.cancelled]
        if any(s.req.cancelled for s in self.active):
            keep = np.array([not s.req.cancelled for s in self.active])
            for i, s in enumerate(self.active):
                if s.req.cancelled:
                    events.append((s.req, self._final(s, "cancelled", i)))
                    self.metrics.finished("cancelled")
            self._retire(keep)

    @staticmethod
    def _unstarted(req: GenerationRequest, reason: str) -> list[tuple[GenerationRequest, Done]]:
        """The final events of a request that never reached the running batch: one per choice."""
        return [(req, Done(reason, "", len(req.prompt_ids), 0, None, req.base + i)) for i in range(req.n)]

    def _retire(self, keep: np.ndarray) -> None:
        self.active = [s for s, k in zip(self.active, keep) if k]
        self.state = [np.ascontiguousarray(a[:, keep, :]) for a in self.state]
        self._params_dirty = True

    def _fail_all(self, e: Exception) -> list[tuple[GenerationRequest, Event]]:
        rows = self.prefilling + self.active
        self.prefilling, self.active = [], []
        self.state = self.art.zero_state(0)
        self._params_dirty = True
        message = f"inference failed on this step ({type(e).__name__}); retry the request"
        for _ in rows:
            self.metrics.finished("error")
        return [(s.req, Failed(message)) for s in rows]
