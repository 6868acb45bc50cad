"""Log-probabilities: of a prompt's tokens (a text scored) and of each generated token with the most likely
ones (OpenAI's `logprobs`), under the model before temperature, top-k and top-p (masked tokens -inf)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .requests import Done

if TYPE_CHECKING:
    from .slot import Slot


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


def scored(s: "Slot", choice: int) -> Done:
    """The final event of a text only scored (`max_tokens` 0): its prompt's log-probabilities."""
    return Done("length", "", len(s.req.prompt_ids), 0, None, s.req.base + choice,
                [] if s.req.logprobs is not None else None, prompt_scores(s))


def prompt_scores(s: "Slot") -> list[float | None] | None:
    """Each prompt token's log-probability given what precedes it (None for a first token with nothing
    before it: a model with no start text)."""
    if s.prompt_lps is None:
        return None
    before = len(s.feed) - len(s.req.prompt_ids)  # the start text fed before the prompt
    return [s.prompt_lps[before + j - 1] if before + j >= 1 else None for j in range(len(s.req.prompt_ids))]
