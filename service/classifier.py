"""A classifier artifact applied to texts: class probabilities, in length-bucketed padded calls.

This is the one path from texts to probabilities: the /classify worker, `rnnserve eval` and the
benchmark's model-alone figures all go through `classify` (or `classify_texts`).

A classifier is trained on texts of at most a window's length (its manifest says: `max_chars` characters
for a `char` tokenizer, `max_tokens` tokens for any other). A longer text is read in windows of at most that
length, up to READ_WINDOWS windows: by characters, cut between words; by tokens, even runs of its tokens.
The windows' log-probabilities, weighted by window length, are averaged (a product of the windows'
answers, as a character n-gram identifier scores a whole text). A text longer than that is read up to the
limit only, and said to be truncated.
"""
from __future__ import annotations

import numpy as np

from .artifact import READ_WINDOWS, Artifact


def max_chars(art: Artifact) -> int:
    """One window: what the classifier was trained on (characters, or tokens for a subword tokenizer)."""
    return art.window


def read_chars(art: Artifact) -> int:
    """What of a text the classifier reads in all: READ_WINDOWS windows (characters, or tokens)."""
    return art.window * READ_WINDOWS


def windows(text: str, n: int, most: int = READ_WINDOWS) -> list[str]:
    """`text` (its first n x most characters) as the fewest windows of at most n characters, of even
    lengths, each cut at a space (dropped) where one lies in the second half of its share. A text of at most
    n characters is one window, as it is."""
    text = text[: n * most]
    k = max(1, -(-len(text) // n))
    out, pos = [], 0
    for left in range(k, 1, -1):
        rest = len(text) - pos
        end = nxt = pos + -(-rest // left)  # an even share of what is left: at most n
        space = text.rfind(" ", pos + (end - pos) // 2, end + 1)
        if space > pos and len(text) - space - 1 <= (left - 1) * n:  # what follows still fits the others
            end, nxt = space, space + 1
        out.append(text[pos:end])
        pos = nxt
    out.append(text[pos:])
    return out


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


def token_windows(ids: list[int], n: int, most: int = READ_WINDOWS) -> list[list[int]]:
    """`ids` (their first n x most) as the fewest runs of at most n, of even lengths."""
    ids = ids[: n * most]
    k = max(1, -(-len(ids) // n))
    bounds = [round(i * len(ids) / k) for i in range(k + 1)]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:])]


def text_windows(art: Artifact, text: str) -> tuple[list[list[int]], bool]:
    """The ids of the windows the classifier reads of `text`, and whether the text is longer than that."""
    tok, n = art.tokenizer, art.window
    if tok.type == "char":
        return [tok.encode(w) for w in windows(text, n)], len(text) > n * READ_WINDOWS
    ids = tok.encode(text)
    return token_windows(ids, n), len(ids) > n * READ_WINDOWS


def classify(art: Artifact, texts: list[str]) -> tuple[list[np.ndarray], list[bool]]:
    """Class probabilities for any number of texts, in input order, and which texts were truncated: every
    window of every text in length-sorted, bucketed calls; a text's windows combined by their
    length-weighted mean log-probability."""
    pieces, truncated = [], []
    for i, t in enumerate(texts):
        seqs, cut = text_windows(art, t)
        pieces += [(s, i) for s in seqs]
        truncated.append(cut)
    logp = np.zeros((len(pieces), len(art.labels)))
    for chunk in length_buckets(sorted((len(w), j) for j, (w, _) in enumerate(pieces))):
        probs = classify_ids(art, [pieces[j][0] for _, j in chunk])
        logp[[j for _, j in chunk]] = np.log(np.maximum(probs, 1e-30))
    weight = np.array([max(1, len(w)) for w, _ in pieces], dtype=np.float64)
    owner = np.array([i for _, i in pieces], dtype=np.int64)
    total = np.zeros((len(texts), logp.shape[1]))
    np.add.at(total, owner, logp * weight[:, None])
    total /= np.bincount(owner, weights=weight, minlength=len(texts))[:, None]
    e = np.exp(total - total.max(1, keepdims=True))
    return list(e / e.sum(1, keepdims=True)), truncated


def classify_texts(art: Artifact, texts: list[str]) -> list[np.ndarray]:
    """Class probabilities for any number of texts, in input order (see `classify`)."""
    return classify(art, texts)[0]


def classify_batch(art: Artifact, texts: list[str]) -> np.ndarray:
    """Class probabilities for a list of texts (one padded ORT call), each read up to one window."""
    n, tok = art.window, art.tokenizer
    return classify_ids(art, [tok.encode(t[:n]) if tok.type == "char" else tok.encode(t)[:n] for t in texts])


def classify_ids(art: Artifact, seqs: list[list[int]]) -> np.ndarray:
    """Class probabilities for id sequences (one padded ORT call). An empty one (a text of spaces to a word
    tokenizer) is read as the unknown token, or padding where there is none."""
    tok = art.tokenizer
    filler = [tok.unk_id if tok.unk_id is not None else (tok.pad_id or 0)]
    seqs = [s or filler for s in seqs]
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    tokens = np.full((len(seqs), int(lengths.max())), tok.pad_id or 0, dtype=np.int64)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    logits, _ = art.run(tokens, lengths=lengths)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
