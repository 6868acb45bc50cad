"""Turn a batch of logits into one token per row, each row with its own parameters.

Everything is vectorised over the batch: one softmax and one cumulative sum;
rows with top-k or top-p also need one sort (rows without skip it). Each row draws exactly one uniform number per token from its own
generator, so a seeded request produces the same text whatever else shares
its batch.
"""
from __future__ import annotations

import numpy as np

# Below this temperature sampling is greedy: logits / T would overflow float32 (1e-40 makes inf, then NaN)
# long before it could differ from the argmax of a trained model's logits.
MIN_TEMPERATURE = 1e-4


class SamplingParams:
    __slots__ = ("temperature", "top_k", "top_p", "seed", "_rng")

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None):
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.seed = seed
        self._rng = None

    @property
    def rng(self) -> np.random.Generator:
        """This request's generator, np.random.default_rng(seed), made at its first draw (in the engine's thread,
        not the event loop's: seeding costs about 10 µs)."""
        if self._rng is None:
            self._rng = np.random.Generator(np.random.PCG64(self.seed))
        return self._rng

    def choice(self, i: int) -> "SamplingParams":
        """The parameters of a request's choice i: its own generator, seeded `seed + i` (choice 0 samples as a
        request of one choice with that seed does; without a seed, a fresh one)."""
        if i == 0:
            return self
        return SamplingParams(self.temperature, self.top_k, self.top_p,
                              None if self.seed is None else self.seed + i)


def sample(logits: np.ndarray, temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray,
           uniforms: np.ndarray) -> np.ndarray:
    """logits (B, V) float32; per-row temperature (below MIN_TEMPERATURE = greedy), top_k (0 = off), top_p (1 = off),
    and one uniform in [0, 1) per row. Returns token ids (B,) int64."""
    batch, vocab = logits.shape
    greedy = temperature < MIN_TEMPERATURE
    if not greedy.any() and not (top_k > 0).any() and not (top_p < 1).any():
        # every row plain (the common case): the same arithmetic as below, without copying rows out and back
        z = logits / temperature[:, None]
        np.subtract(z, z.max(1, keepdims=True), out=z)
        np.exp(z, out=z)
        cum = np.cumsum(z, 1, out=z)
        idx = (cum <= (uniforms * cum[:, -1])[:, None]).sum(1)
        return np.minimum(idx, vocab - 1)
    out = np.empty(batch, dtype=np.int64)
    if greedy.any():
        out[greedy] = logits[greedy].argmax(1)
    filtered = ~greedy & ((top_k > 0) | (top_p < 1))
    plain = np.flatnonzero(~greedy & ~filtered)
    if plain.size:
        # no top-k/top-p: inverse CDF over the unsorted distribution, no sort needed
        z = logits[plain] / temperature[plain, None]
        cum = np.cumsum(np.exp(z - z.max(1, keepdims=True)), 1)
        idx = (cum <= (uniforms[plain] * cum[:, -1])[:, None]).sum(1)
        out[plain] = np.minimum(idx, vocab - 1)
    rows = np.flatnonzero(filtered)
    if rows.size == 0:
        return out
    z = logits[rows] / temperature[rows, None]
    order = np.argsort(-z, axis=1, kind="stable")
    zs = np.take_along_axis(z, order, 1)
    p = np.exp(zs - zs[:, :1])
    p /= p.sum(1, keepdims=True)
    rank = np.arange(vocab)[None, :]
    k = np.where(top_k[rows] > 0, top_k[rows], vocab)[:, None]
    cum = np.cumsum(p, 1)
    # keep the top k, and the smallest prefix whose mass reaches top_p; the most likely token always stays,
    # however small top_p (a top_p below float32's smallest number would otherwise keep nothing)
    keep = (rank < k) & (((cum - p) < top_p[rows, None]) | (rank == 0))
    p = np.where(keep, p, 0.0)
    cum = np.cumsum(p, 1)
    target = uniforms[rows] * cum[:, -1]
    idx = (cum <= target[:, None]).sum(1)
    idx = np.minimum(idx, keep.sum(1) - 1)
    out[rows] = order[np.arange(rows.size), idx]
    return out
