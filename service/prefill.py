"""Prefill: a request's prompt read through the model, several requests of equal chunk length in one call, in
chunks so that a long prompt never stalls the running streams for long; a prompt read to its end joins the
running batch (as n rows for n choices). A mixin of Engine (engine thread only)."""
from __future__ import annotations

import time

import numpy as np

from .logprobs import log_softmax_at, scored
from .slot import Slot


class Prefill:
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
            for s in [s for s in ready if s.req.max_tokens == 0]:
                events += [(s.req, scored(s, i)) for i in range(s.req.n)]
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
