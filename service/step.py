"""The decode step: every active row advances one token in one ONNX Runtime call; the batch's logits are
masked (padding, UTF-8 guard), shaped by the rows' controls (processors.py), sampled in one vectorised call
(sampler.py); each row's new token becomes text, stop strings are held back and found, finished rows get
their final event. A mixin of Engine (engine thread only)."""
from __future__ import annotations

import time

import numpy as np

from .logprobs import prompt_scores, token_logprob
from .processors import BatchControls
from .requests import Done, Failed, Text
from .sampler import sample
from .sessions import SessionState
from .slot import CONTEXT, Slot


class Step:
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
        mono = time.monotonic()
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
                s.held += piece
            # text goes to the stream when its writer would take it (Channel.wants_text: its pacing) or the
            # row ends: one event for the tokens of several steps, not one each (the writer merged them anyway)
            if s.held and (reason is not None or (reply := s.req.reply) is None or reply.wants_text(mono)):
                events.append((s.req, self._text(s, s.held)))
                s.held = ""
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
        if s.held:
            events.append((s.req, self._text(s, s.held)))
            s.held = ""
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
                    prompt_scores(s), s.tail)

    @staticmethod
    def _text(s: Slot, piece: str) -> Text:
        """A choice's new text, with the log-probabilities of the tokens generated since its last piece."""
        if s.lps is None:
            return Text(piece, s.choice)
        lps, s.lp_sent = s.lps[s.lp_sent:], len(s.lps)
        return Text(piece, s.choice, lps)
