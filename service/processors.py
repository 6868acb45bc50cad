"""Logits processors: the one place where a batch's logits are shaped before sampling.

Per row, vectorised over the rows that use each control, in this order:

- `repetition_penalty` r (HF, vLLM): a token already in this request's prompt or output has its logit
  divided by r when positive, multiplied by r when negative;
- `frequency_penalty` f and `presence_penalty` p (OpenAI): logit -= f * count + p * (count > 0), the count
  of the token in this request's output so far;
- `logit_bias` (OpenAI): a fixed vector added to the row (-100 bans a token, +100 forces it);
- a grammar's mask (constraints.py): tokens the row's grammar does not allow are -inf;
- `min_p` (vLLM): after temperature, a token less likely than min_p times the most likely one is -inf.

A request with none of them carries no `Controls` and its row costs nothing; a step with no controlled row
skips all of this. The engine knows only `BatchControls.apply` (before sampling) and `.after` (each row's
new token); what each control means stays here.
"""
from __future__ import annotations

import numpy as np

from .constraints import Grammar, MaskBatch
from .sampler import MIN_TEMPERATURE


class Controls:
    """One request's controls (immutable, shared by its choices)."""
    __slots__ = ("frequency", "presence", "repetition", "bias", "min_p", "grammar")

    def __init__(self, frequency: float = 0.0, presence: float = 0.0, repetition: float = 1.0,
                 bias: dict[int, float] | None = None, min_p: float = 0.0, grammar: Grammar | None = None):
        self.frequency, self.presence, self.repetition = float(frequency), float(presence), float(repetition)
        self.bias = {int(k): float(v) for k, v in (bias or {}).items() if v} or None
        self.min_p, self.grammar = float(min_p), grammar

    @classmethod
    def of(cls, **kw) -> "Controls | None":
        """The controls, or None when every one is neutral (0, 1, {}, no grammar): such a row pays nothing."""
        c = cls(**kw)
        return c if (c.penalised or c.bias or c.min_p > 0 or c.grammar is not None) else None

    @property
    def penalised(self) -> bool:
        return self.frequency != 0 or self.presence != 0 or self.repetition != 1

    def row(self, vocab: int, prompt_ids: list[int]) -> "RowControls":
        return RowControls(self, vocab, prompt_ids)


class RowControls:
    """One row's companion: its output counts, its prompt's tokens (repetition penalty), its grammar matcher."""
    __slots__ = ("c", "counts", "seen", "matcher")

    def __init__(self, c: Controls, vocab: int, prompt_ids: list[int]):
        self.c = c
        self.counts = np.zeros(vocab, dtype=np.int32) if c.penalised else None
        self.seen = None
        if c.repetition != 1:
            self.seen = np.zeros(vocab, dtype=bool)
            self.seen[np.asarray(prompt_ids, dtype=np.int64)] = True
        self.matcher = c.grammar.matcher() if c.grammar is not None else None


class BatchControls:
    """The controls of the running batch, laid out per control over the rows that use it; rebuilt when the
    batch changes (a row joins or leaves), applied and advanced every step.

    What a step costs is kept to a few whole-matrix operations: the additive part (logit_bias minus the
    frequency and presence penalties) is one matrix updated only where a row's new token lands, and so are
    the repetition penalty's factors (1/r and r where a token was seen, 1 elsewhere); rows are gathered only
    when not every row of the batch uses a control."""

    def __init__(self, rows: list[RowControls | None], vocab: int, masks: MaskBatch | None):
        self.vocab = vocab
        self.any = any(r is not None for r in rows)
        self.dead: set[int] = set()
        if not self.any:
            return
        batch = len(rows)
        # additive: penalties and bias, over the rows that have either
        add = [(i, r) for i, r in enumerate(rows) if r is not None and (r.counts is not None or r.c.bias)]
        self.add_rows, self.add_all = _rows(add, batch)
        if add:
            self.add = np.zeros((len(add), vocab), dtype=np.float32)
            for j, (_, r) in enumerate(add):
                if r.c.bias:
                    self.add[j, np.fromiter(r.c.bias, dtype=np.int64)] = np.fromiter(r.c.bias.values(), np.float32)
            self.bias = self.add.copy()
            counted = [(j, r) for j, (_, r) in enumerate(add) if r.counts is not None]
            self.cnt_j = np.array([j for j, _ in counted], dtype=np.int64)  # rows of `add` with penalties
            self.cnt_rows = np.array([add[j][0] for j, _ in counted], dtype=np.int64)  # their batch rows
            if counted:
                # the rows' counts become views into one matrix: a step's update is one indexed add, and each row
                # keeps its counts when the batch is rebuilt
                self.counts = np.stack([r.counts for _, r in counted])
                for k, (_, r) in enumerate(counted):
                    r.counts = self.counts[k]
                self.freq = np.array([r.c.frequency for _, r in counted], dtype=np.float32)
                self.pres = np.array([r.c.presence for _, r in counted], dtype=np.float32)
                self.add[self.cnt_j] -= self.freq[:, None] * self.counts + self.pres[:, None] * (self.counts > 0)
        # repetition penalty: multiplicative factors where a token was seen
        rep = [(i, r) for i, r in enumerate(rows) if r is not None and r.seen is not None]
        self.rep_rows, self.rep_all = _rows(rep, batch)
        if rep:
            for _, r in rep:
                r.seen |= r.counts > 0
            seen = np.stack([r.seen for _, r in rep])
            for k, (_, r) in enumerate(rep):
                r.seen = seen[k]
            self.seen = seen
            self.rep_r = np.array([r.c.repetition for _, r in rep], dtype=np.float32)
            self.rep_up = np.where(seen, 1 / self.rep_r[:, None], np.float32(1)).astype(np.float32)
            self.rep_down = np.where(seen, self.rep_r[:, None], np.float32(1)).astype(np.float32)
            # each counted row's place among the repetition rows (-1: none), for the per-step update
            where = {i: k for k, (i, _) in enumerate(rep)}
            self.rep_of_cnt = np.array([where.get(int(i), -1) for i in self.cnt_rows], dtype=np.int64) \
                if add and self.cnt_rows.size else np.zeros(0, np.int64)
        self.gram = [(i, r.matcher) for i, r in enumerate(rows) if r is not None and r.matcher is not None]
        self.gram_rows = np.array([i for i, _ in self.gram], dtype=np.int64)
        self.masks = masks
        mp = [(i, r.c.min_p) for i, r in enumerate(rows) if r is not None and r.c.min_p > 0]
        self.mp_rows = np.array([i for i, _ in mp], dtype=np.int64)
        self.mp_log = np.log(np.array([p for _, p in mp], dtype=np.float32))

    def apply(self, logits: np.ndarray, temperature: np.ndarray) -> None:
        """Shape the step's logits (batch, vocab) in place."""
        if self.rep_rows.size:
            x = logits if self.rep_all else logits[self.rep_rows]
            x *= np.where(x > 0, self.rep_up, self.rep_down)
            if not self.rep_all:
                logits[self.rep_rows] = x
        if self.add_rows.size:
            if self.add_all:
                logits += self.add
            else:
                logits[self.add_rows] += self.add
        if self.gram:
            idx = self.gram_rows
            allowed = self.masks.allowed([m for _, m in self.gram])
            x = np.where(allowed, logits[idx], -np.inf)
            # a row whose other masks (the UTF-8 guard) left it nothing the grammar allows: the grammar decides
            dead = ~np.isfinite(x).any(1)
            if dead.any():
                x[dead] = np.where(allowed[dead], 0.0, -np.inf)
                x[dead & ~allowed.any(1), 0] = 0.0  # nothing allowed at all: the row ends (`after`), not sampled
                self.dead = {int(idx[j]) for j in np.flatnonzero(~allowed.any(1))}
            logits[idx] = x
        if self.mp_rows.size:
            t = temperature[self.mp_rows]
            z = logits[self.mp_rows]
            # p / p_max < min_p  <=>  (z - z_max) / T < log(min_p); greedy rows (T ~ 0) keep their most likely
            cut = z.max(1) + np.maximum(t, MIN_TEMPERATURE) * self.mp_log
            z[z < cut[:, None]] = -np.inf
            logits[self.mp_rows] = z

    def after(self, new: list[int]) -> dict[int, str]:
        """Each row has taken its token: count it, advance its grammar. The rows whose grammar is complete (it
        allows nothing more) as {row: "stop"}; a row whose grammar allowed no token of the vocabulary at all,
        {row: "unsatisfiable"} (its token is not the grammar's: the engine drops the row with an error)."""
        if self.add_rows.size and self.cnt_rows.size:
            toks = np.asarray(new)[self.cnt_rows]
            k = np.arange(self.cnt_rows.size)
            self.counts[k, toks] += 1
            c = self.counts[k, toks]
            self.add[self.cnt_j, toks] = self.bias[self.cnt_j, toks] - self.freq * c - self.pres
            if self.rep_rows.size:
                hit = self.rep_of_cnt >= 0
                r = self.rep_of_cnt[hit]
                self.seen[r, toks[hit]] = True
                self.rep_up[r, toks[hit]] = 1 / self.rep_r[r]
                self.rep_down[r, toks[hit]] = self.rep_r[r]
        ended = {}
        for i, m in self.gram:
            if i in self.dead:
                ended[i] = "unsatisfiable"  # the grammar needs text this vocabulary cannot write
            elif not m.consume_token(new[i]) or m.is_stopped():
                ended[i] = "stop"
        return ended


def _rows(pairs: list, batch: int) -> tuple[np.ndarray, bool]:
    """The batch rows of (row, companion) pairs, and whether they are every row in order (then the step works on
    the logits themselves, without gathering rows)."""
    idx = np.array([i for i, _ in pairs], dtype=np.int64)
    return idx, idx.size == batch
