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
from .processors import BatchControls
from .requests import Done, Event, Failed, GenerationRequest, Text
from .sampler import sample
from .sessions import SessionState

log = logging.getLogger("rnnserve.engine")

UNIFORMS = 64  # a row's uniforms drawn at a time (Slot.draw)
CONTEXT = 8  # ids a kept state remembers (SessionState.context): a character is at most 4 byte tokens


def log_softmax_at(logits: np.ndarray, targets: list[int]) -> list[float]:
    """logits (time, vocab): the log-probability of targets[t] at each step t (float64 sums)."""
    x = logits[: len(targets)].astype(np.float64)
    m = x.max(1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(1, keepdims=True)))[:, 0]
    return (x[np.arange(len(targets)), targets] - lse).tolist()


def token_logprob(row: np.ndarray, token: int, top: int) -> tuple[int, float, list[tuple[int, float]]]:
    """A generated token's log-probability under the model (masked tokens -inf; before temperature, top-k and
    top-p), and the `top` most likely tokens'."""
    x = row.astype(np.float64)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    best = []
    if top:
        idx = np.argpartition(-x, top - 1)[:top]
        best = [(int(j), float(x[j] - lse)) for j in idx[np.argsort(-x[idx], kind="stable")]]
    return int(token), float(x[token] - lse), best


class Overloaded(Exception):
    """The engine cannot take the request (queue full, or shutting down): the HTTP layer answers 503."""


class Slot:
    """One choice of a request, running inside the engine (engine thread only). A request of n choices is one
    slot while its prompt is read, then n (`fork`)."""
    __slots__ = ("req", "feed", "cursor", "state", "next_token", "generated", "text", "sent", "stop_scan",
                 "t_first", "tokens_seen", "piece", "pending", "chain", "gen_ids", "choice", "sampling", "lps",
                 "lp_sent", "prompt_lps", "uniforms", "ctl", "tail", "recent")

    def __init__(self, req: GenerationRequest, engine: "Engine", choice: int = 0):
        self.req = req
        self.choice = req.base + choice  # the index its events carry
        self.sampling = req.sampling.choice(choice)
        self.uniforms: list[float] = []  # this row's next draws, last first (`draw`)
        self.lps = [] if req.logprobs is not None else None  # each generated token's log-probability
        self.lp_sent = 0
        self.prompt_lps = [] if req.prompt_logprobs else None  # feed[k + 1]'s given feed[:k + 1]
        # penalties, logit bias, min_p, a grammar's matcher (processors.py); None: a plain row
        self.ctl = req.controls.row(engine.vocab, req.prompt_ids) if req.controls is not None else None
        self.tail = ""  # the text past a stop string: read by the state, never sent
        start = req.start
        before: list[int] = []  # ids read before this request (a session's last few): context for decoding
        if start is not None:
            self.state = [a[:, None, :].copy() for a in start.arrays]
            self.feed = [start.next_token] + req.prompt_ids
            self.tokens_seen = start.tokens_seen
            before = list(start.context[:-1]) if start.context else []
        else:
            self.state = engine.art.zero_state(1)
            self.feed = engine.bos_ids + req.prompt_ids
            self.tokens_seen = 0
        # this row's incremental decoder: id -> new text, whole characters (a character a turn boundary split
        # is finished by the next turn: the decoder starts from the session's last ids)
        self.piece = engine.stream(before + self.feed)
        # byte-level vocabularies: the bytes of a character begun and not finished (Utf8Guard)
        self.pending = engine.guard.pending_of(before + self.feed) if engine.guard else b""
        # the last ids read, kept for a request whose state is kept (SessionState.context)
        self.recent = (before + self.feed)[-CONTEXT:] if req.keep_state else None
        self.cursor = 0
        # a fresh text starts from the longest prefix of its ids the prefix cache holds, and offers states back
        self.chain, self.gen_ids = None, None
        cache = engine.cache
        if start is None and cache is not None and choice == 0 and not req.prompt_logprobs:
            self.chain, self.gen_ids = cache.chain(engine.root, self.feed, len(self.feed) - 1), []
            hit = cache.lookup(self.chain, self.feed, len(self.feed) - 1)
            engine.metrics.prefix(hit[0] if hit else 0)
            if hit:
                self.cursor, self.state = hit  # shared arrays: only ever copied into a batch, never written
        self.next_token = 0
        self.generated = 0
        self.text = ""
        self.sent = 0
        self.stop_scan = 0
        self.t_first: float | None = None

    def draw(self) -> float:
        """The row's next uniform, one per step: drawn from its generator UNIFORMS at a time, the same numbers
        as one call each (a generator's block is its next draws in order), without a call per token."""
        self.uniforms = self.sampling.rng.random(UNIFORMS)[::-1].tolist()
        return self.uniforms.pop()

    def fork(self, choice: int, engine: "Engine") -> "Slot":
        """Choice `choice` of this slot's request, once its prompt is read: a copy of the state reached, its own
        generator and decoder."""
        c = Slot(self.req, engine, choice)
        c.state = [a.copy() for a in self.state]
        c.cursor, c.next_token, c.pending, c.prompt_lps = self.cursor, self.next_token, self.pending, self.prompt_lps
        c.recent = list(self.recent) if self.recent is not None else None
        if self.chain is not None:
            c.chain, c.gen_ids = self.chain, []
        return c


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


class Engine:
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
            piece = self._emittable(s, final=True)
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

    def _prefill_some(self, events: list) -> None:
        """Run one chunk of every prompt still being read, grouped by chunk length. A prompt read to its end
        joins the running batch (as n rows for n choices), or ends there when no token is asked for (a text
        scored: `max_tokens` 0)."""
        if not self.prefilling:
            return
        groups: dict[int, list[Slot]] = {}
        chunk = self.prefill_chunk
        for s in self.prefilling:
            todo = len(s.feed) - 1 - s.cursor  # the last token is left for the decode step
            if todo > 0:  # chunks end on multiples of `chunk` (the prefix cache's block boundaries)
                groups.setdefault(min(todo, chunk - s.cursor % chunk), []).append(s)
        cache = self.cache
        for n, rows in groups.items():
            t0 = time.perf_counter()
            tokens = np.array([s.feed[s.cursor:s.cursor + n] for s in rows], dtype=np.int64)
            state = [np.concatenate([s.state[k] for s in rows], axis=1) for k in range(len(rows[0].state))]
            logits, out = self.art.run(tokens, state)
            for i, s in enumerate(rows):
                s.state = [o[:, i:i + 1, :] for o in out]
                if s.prompt_lps is not None:  # each fed position scores the next token of the feed
                    s.prompt_lps += log_softmax_at(logits[i], s.feed[s.cursor + 1:s.cursor + n + 1])
                s.cursor += n
                if s.chain is not None and s.cursor % chunk == 0 and s.cursor < len(s.feed) - 1:
                    cache.offer(s.chain, s.feed, s.cursor, s.state)
            self.metrics.prefill(len(rows), tokens.size, time.perf_counter() - t0)
        ready = [s for s in self.prefilling if s.cursor >= len(s.feed) - 1]
        if ready:
            self.prefilling = [s for s in self.prefilling if s.cursor < len(s.feed) - 1]
            for s in ready:
                s.next_token = s.feed[-1]
                if s.chain is not None:  # the end of the prompt: where a resent conversation starts over
                    cache.offer(s.chain, s.feed, s.cursor, s.state)
            scored = [s for s in ready if s.req.max_tokens == 0]
            for s in scored:
                events += [(s.req, self._scored(s, i)) for i in range(s.req.n)]
                self.metrics.finished("length")
            ready = [c for s in ready if s.req.max_tokens > 0
                     for c in [s] + [s.fork(i, self) for i in range(1, s.req.n)]]
            if not ready:
                return
            self.state = [np.concatenate([a] + [s.state[k] for s in ready], axis=1)
                          for k, a in enumerate(self.state)]
            for s in ready:
                s.state = None
            self.active += ready
            self._params_dirty = True

    def _batch_params(self):
        if self._params_dirty:
            self._temp = np.array([s.sampling.temperature for s in self.active], dtype=np.float32)
            self._topk = np.array([s.sampling.top_k for s in self.active], dtype=np.int64)
            self._topp = np.array([s.sampling.top_p for s in self.active], dtype=np.float32)
            self._controls = BatchControls([s.ctl for s in self.active], self.vocab, self._masks)
            self._params_dirty = False
        return self._temp, self._topk, self._topp

    def _step(self, events: list) -> None:
        if not self.active:
            return
        t0 = time.perf_counter()
        batch = len(self.active)
        tokens = np.fromiter((s.next_token for s in self.active), dtype=np.int64, count=batch)[:, None]
        logits, self.state = self.art.run(tokens, self.state)
        logits = logits[:, 0, :]
        if self.pad_id is not None:
            logits[:, self.pad_id] = -np.inf  # padding is not text: never generated, however hot the sampling
        if self.guard is not None:
            self._keep_utf8(logits)
        temp, topk, topp = self._batch_params()
        controls = self._controls
        if controls.any:
            controls.apply(logits, temp)
        uniforms = np.fromiter((s.uniforms.pop() if s.uniforms else s.draw() for s in self.active), dtype=np.float64,
                               count=batch)
        new = sample(logits, temp, topk, topp, uniforms).tolist()
        ended = controls.after(new) if controls.any else None  # rows whose grammar is complete
        now = time.perf_counter()
        self.metrics.step(batch, now - t0)
        keep = None
        firsts = 0
        guard = self.guard
        for i, (s, tok) in enumerate(zip(self.active, new)):
            if ended and ended.get(i) == "unsatisfiable":
                keep = self._unsatisfiable(s, i, events, keep, batch)
                continue
            s.next_token = tok
            s.generated += 1
            if s.recent is not None:
                s.recent.append(tok)
                if len(s.recent) > 4 * CONTEXT:
                    del s.recent[:-CONTEXT]
            if guard is not None:
                s.pending = guard.after(s.pending, tok)
            if s.gen_ids is not None:
                s.gen_ids.append(tok)
            if s.lps is not None:
                s.lps.append(token_logprob(logits[i], tok, s.req.logprobs))
            if s.t_first is None:
                s.t_first = now
                firsts += 1
                self.metrics.first_token(now - s.req.arrival)
            if s.req.stop:
                s.text += s.piece(tok)
                reason = self._check_stop(s)
                if reason is None and ended:
                    reason = ended.get(i)
                if reason is None and s.generated >= s.req.max_tokens:
                    reason = "length"
                piece = self._emittable(s, final=reason is not None)
            else:  # the common case, kept short: nothing to hold back
                piece = s.piece(tok)
                s.text += piece
                s.sent = len(s.text)
                reason = "length" if s.generated >= s.req.max_tokens else None
                if ended and i in ended:
                    reason = ended[i]
            if piece:
                events.append((s.req, self._text(s, piece)))
            if reason is not None:
                if s.lps is not None and s.lp_sent < len(s.lps):  # tokens whose text never showed (a stop string)
                    events.append((s.req, self._text(s, "")))
                events.append((s.req, self._final(s, reason, i)))
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

    def _unsatisfiable(self, s: Slot, row: int, events: list, keep, batch: int):
        """A row whose grammar needs text this vocabulary cannot write: it ends with an error, nothing kept."""
        events.append((s.req, Failed("the constraint needs text this model's vocabulary cannot write (a character "
                                     "it does not have)", "constraint_unsatisfiable", None, 422)))
        self.metrics.finished("error")
        if keep is None:
            keep = np.ones(batch, dtype=bool)
        keep[row] = False
        return keep

    def _keep_utf8(self, logits: np.ndarray) -> None:
        """Mask the tokens that would make a row's bytes invalid UTF-8 (Utf8Guard): the fixed set at a
        character boundary for every row, then each row inside a character gets its own mask."""
        inside = [(i, s.pending) for i, s in enumerate(self.active) if s.pending]
        rows = [logits[i].copy() for i, _ in inside]
        logits[:, self.guard.banned] = -np.inf
        for (i, pending), row in zip(inside, rows):
            logits[i] = np.where(self.guard.allowed(pending), row, -np.inf)

    def _check_stop(self, s: Slot) -> str | None:
        stop = s.req.stop
        longest = max(len(x) for x in stop)
        start = max(0, s.stop_scan - longest + 1)
        hits = [i for i in (s.text.find(x, start) for x in stop) if i >= 0]
        s.stop_scan = len(s.text)
        if hits:
            s.text, s.tail = s.text[: min(hits)], s.text[min(hits):]
            return "stop"
        return None

    def _emittable(self, s: Slot, final: bool) -> str:
        """New text that can be sent: hold back a tail that could still grow into a stop string."""
        end = len(s.text)
        stop = s.req.stop
        if not final and stop:
            for hold in range(min(max(len(x) for x in stop) - 1, end - s.sent), 0, -1):
                tail = s.text[end - hold:]
                if any(x.startswith(tail) for x in stop):
                    end -= hold
                    break
        piece = s.text[s.sent:end]
        s.sent = end
        return piece

    def _final(self, s: Slot, reason: str, row: int) -> Done:
        """The final event of an active row; with the state it reached when the request keeps state. A fresh
        text's state is offered to the prefix cache: its prompt and completion are what the next turn of a
        conversation resends."""
        if s.chain is not None and s.gen_ids and reason in ("length", "stop"):
            consumed = s.feed + s.gen_ids[:-1]  # everything fed: the last token is still pending
            self.cache.offer(self.cache.chain(self.root, consumed, len(consumed)), consumed, len(consumed),
                             [a[:, row:row + 1, :] for a in self.state])
        kept = None
        if s.req.keep_state:
            kept = SessionState([np.ascontiguousarray(a[:, row, :]) for a in self.state], s.next_token,
                                s.tokens_seen + len(s.feed) - 1 + s.generated, self.art.fingerprint,
                                context=s.recent[-CONTEXT:])
        return Done(reason, s.text, len(s.req.prompt_ids), s.generated, kept, s.choice, s.lps,
                    self._prompt_scores(s), s.tail)

    @staticmethod
    def _text(s: Slot, piece: str) -> Text:
        """A choice's new text, with the log-probabilities of the tokens generated since its last piece."""
        if s.lps is None:
            return Text(piece, s.choice)
        lps, s.lp_sent = s.lps[s.lp_sent:], len(s.lps)
        return Text(piece, s.choice, lps)

    @staticmethod
    def _unstarted(req: GenerationRequest, reason: str) -> list[tuple[GenerationRequest, Done]]:
        """The final events of a request that never reached the running batch: one per choice."""
        return [(req, Done(reason, "", len(req.prompt_ids), 0, None, req.base + i)) for i in range(req.n)]

    def _scored(self, s: Slot, choice: int) -> Done:
        """The final event of a text only scored (`max_tokens` 0): its prompt's log-probabilities."""
        return Done("length", "", len(s.req.prompt_ids), 0, None, s.req.base + choice,
                    [] if s.req.logprobs is not None else None, self._prompt_scores(s))

    @staticmethod
    def _prompt_scores(s: Slot) -> list[float | None] | None:
        """Each prompt token's log-probability given what precedes it (None for a first token with nothing
        before it: a model with no start text)."""
        if s.prompt_lps is None:
            return None
        before = len(s.feed) - len(s.req.prompt_ids)  # the start text fed before the prompt
        return [s.prompt_lps[before + j - 1] if before + j >= 1 else None for j in range(len(s.req.prompt_ids))]

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
