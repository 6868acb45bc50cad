"""A row of the running batch: one choice of a request, made at admission (engine thread only).

It holds what the row has read (`feed`, its `cursor` through a prompt, its `state` until it joins the batch),
its pending token, its text and what has been sent of it, its own generator and incremental decoder, its
logits controls (processors.RowControls) and, for a byte-level vocabulary, the bytes of a character begun.
A fresh text starts from the longest prefix of its ids the prefix cache holds; a session's from its state
and its last ids.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .requests import GenerationRequest

if TYPE_CHECKING:
    from .engine import Engine

UNIFORMS = 64  # a row's uniforms drawn at a time (Slot.draw)
CONTEXT = 8  # ids a kept state remembers (SessionState.context): a character is at most 4 byte tokens


class Slot:
    """One choice of a request, running inside the engine (engine thread only). A request of n choices is one
    slot while its prompt is read, then n (`fork`)."""
    __slots__ = ("req", "feed", "cursor", "state", "next_token", "generated", "text", "sent", "stop_scan",
                 "t_first", "tokens_seen", "piece", "pending", "chain", "gen_ids", "choice", "sampling", "lps",
                 "lp_sent", "prompt_lps", "uniforms", "ctl", "tail", "recent", "held")

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
        self.held = ""  # text sendable but not yet handed to the stream (it was not taking: Channel.wants_text)
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
