"""A classifier artifact applied to texts: class probabilities, in length-bucketed padded calls.

This is the one path from texts to probabilities: the /classify worker, `rnnserve eval` and the
benchmark's model-alone figures all go through `classify_texts`.
"""
from __future__ import annotations

import numpy as np

from .artifact import Artifact

DEFAULT_MAX_CHARS = 400  # characters a classifier reads when its manifest does not say (`max_chars`)


def max_chars(art: Artifact) -> int:
    """Characters of each text the classifier reads: what it was trained on (the manifest's `max_chars`)."""
    return int(art.manifest.get("max_chars") or DEFAULT_MAX_CHARS)


MAX_CALL_TOKENS = 8192  # rows x padded length of one call: bounds the memory a call takes (a 256 x 400 call held
                        # ~500 MB of activations in the bundled langid; 8,192 tokens keep it near 20 MB)


def length_buckets(items: list, max_rows: int = 256, spread: float = 1.5, slack: int = 16,
                   max_tokens: int = MAX_CALL_TOKENS) -> list[list]:
    """Cut (length, ...) items, sorted by length, into calls whose texts have similar lengths: a padded
    call costs its longest text for every row, so one long text among short ones multiplies its cost.
    A call also holds at most `max_tokens` rows x length (at least one row)."""
    out, cur = [], []
    for it in items:
        if cur and (len(cur) >= max_rows or it[0] > cur[0][0] * spread + slack or
                    (len(cur) + 1) * it[0] > max_tokens):
            out.append(cur)
            cur = []
        cur.append(it)
    if cur:
        out.append(cur)
    return out


def classify_texts(art: Artifact, texts: list[str]) -> list[np.ndarray]:
    """Class probabilities for any number of texts, in input order: length-sorted, bucketed calls."""
    out: list = [None] * len(texts)
    n = max_chars(art)
    for chunk in length_buckets(sorted((min(len(t), n), i) for i, t in enumerate(texts))):
        for (_, i), p in zip(chunk, classify_batch(art, [texts[i] for _, i in chunk])):
            out[i] = p
    return out


def classify_batch(art: Artifact, texts: list[str]) -> np.ndarray:
    """Class probabilities for a list of texts (one padded ORT call), each read up to `max_chars(art)`."""
    n = max_chars(art)
    seqs = [art.tokenizer.encode(t[:n]) or [art.tokenizer.unk_id] for t in texts]
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    tokens = np.full((len(seqs), int(lengths.max())), art.tokenizer.pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    logits, _ = art.run(tokens, lengths=lengths)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
