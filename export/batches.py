"""How a language model reads its training text: the token ids in one numpy array (memory-mapped from the run
folder for a big text), laid out into batches by one of two orders.

- `windows` (the default): each pass cuts the text into windows of `window` chunks of `seq_len` tokens at a
  random offset, in a random order; a batch reads `batch_size` windows side by side, chunk after chunk, the
  state carried from chunk to chunk inside a window and started from zeros at the next. A batch is a sample
  of the whole text, so the weights never drift towards one stretch of it: on a continuous text (a play, a
  book) the contiguous order's 32 rows walk 32 neighbouring stretches in lockstep for a whole pass, and its
  validation curve rose by a bit per character and more around the first pass (issue 37's tables).
- `contiguous`: the text as `batch_size` contiguous rows read in lockstep, the state carried across the
  whole pass (truncated backpropagation through time), each pass shifted by a random offset.

Both are functions of (seed, step): the same seed reads the same batches, and a run resumed at step k reads
what it would have read (`--resume`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ORDERS = ("windows", "contiguous")
BIG_CHARS = 32_000_000  # a longer training text keeps its ids in a memory-mapped file of the run folder
CHUNK_CHARS = 1 << 22  # characters encoded at a time


def encode_ids(tok, text: str, path: Path | None = None) -> np.ndarray:
    """The text's token ids as int32, encoded a few MB at a time (a character vocabulary through one lookup
    table, others by the tokenizer on pieces cut at line ends, where no token spans the cut), written to a
    memory-mapped file at `path` when given. The peak beyond the text itself is one piece's worth."""
    pieces = _pieces(text)
    if tok.type == "char":
        table = np.full(0x110000, -1 if tok.unk_id is None else tok.unk_id, dtype=np.int32)
        for c, i in tok.stoi.items():
            table[ord(c)] = i
        encode = lambda s: table[np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)]  # noqa: E731
    else:
        encode = lambda s: np.asarray(tok.encode(s), dtype=np.int32)  # noqa: E731
    if path is None:
        parts = []
        for piece in pieces:
            parts.append(_checked(tok, piece, encode(piece)))
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)
    with open(path, "wb") as f:  # written piece by piece: memory holds one piece's ids at a time
        for piece in pieces:
            f.write(_checked(tok, piece, encode(piece)).tobytes())
    return np.memmap(path, dtype=np.int32, mode="r")


def _checked(tok, piece: str, ids: np.ndarray) -> np.ndarray:
    if tok.type == "char" and tok.unk_id is None and (ids < 0).any():
        tok.encode(piece)  # raises EncodeError naming the character
    return ids


def _pieces(text: str):
    start = 0
    while start < len(text):
        end = min(len(text), start + CHUNK_CHARS)
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        yield text[start:end]
        start = end


class Order:
    """steps_per_pass, and batch(step) -> (x, y, fresh): inputs and targets (batch, seq_len) int64 and whether
    the state starts from zeros at this step."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int):
        self.ids, self.batch_size, self.seq_len, self.seed = ids, batch_size, seq_len, seed

    def _rng(self, p: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, p])

    def _gather(self, starts: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts[:, None] + np.arange(length + 1)[None, :]
        block = torch.from_numpy(np.asarray(self.ids[idx], dtype=np.int64))
        return block[:, :-1], block[:, 1:]


class Windows(Order):
    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int, window: int = 4):
        super().__init__(ids, batch_size, seq_len, seed)
        # a short text gets shorter windows, so that a pass still holds a batch of them
        self.window = max(1, min(window, (len(ids) - 1) // (seq_len * (batch_size + 1))))
        self.span = seq_len * self.window
        n = (len(ids) - 1) // self.span  # windows per pass (each pass loses at most one to its offset)
        if n - 1 < batch_size:
            raise ValueError(f"text too short for {batch_size} windows of {self.span} tokens: {len(ids)} tokens "
                             "(lower --batch-size or --seq-len)")
        self.groups = (n - 1) // batch_size
        self.steps_per_pass = self.groups * window
        self._pass, self._starts = None, None

    def starts(self, p: int) -> np.ndarray:
        """Pass p's window starts, in reading order."""
        if self._pass != p:
            rng = self._rng(p)
            offset = int(rng.integers(self.span))
            self._starts = offset + self.span * rng.permutation(self.groups * self.batch_size)
            self._pass = p
        return self._starts

    def batch(self, step: int):
        p, k = divmod(step, self.steps_per_pass)
        g, c = divmod(k, self.window)
        rows = self.starts(p)[g * self.batch_size:(g + 1) * self.batch_size] + c * self.seq_len
        x, y = self._gather(rows, self.seq_len)
        return x, y, c == 0


class Contiguous(Order):
    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int):
        super().__init__(ids, batch_size, seq_len, seed)
        self.row_len = (len(ids) - 1) // batch_size
        self.steps_per_pass = max(1, (self.row_len - seq_len) // seq_len)
        if self.row_len < 2 * seq_len:
            raise ValueError(f"text too short for batch size {batch_size}: {len(ids)} tokens")

    def batch(self, step: int):
        p, k = divmod(step, self.steps_per_pass)
        # each pass shifts the chunk grid a little, so that chunk boundaries differ between passes
        offset = int(self._rng(p).integers(max(1, self.row_len - self.seq_len * (self.steps_per_pass + 1))))
        rows = np.arange(self.batch_size) * self.row_len + offset + k * self.seq_len
        x, y = self._gather(rows, self.seq_len)
        return x, y, k == 0


def make_order(kind: str, ids: np.ndarray, batch_size: int, seq_len: int, seed: int, window: int = 4) -> Order:
    if kind == "windows":
        return Windows(ids, batch_size, seq_len, seed, window)
    if kind == "contiguous":
        return Contiguous(ids, batch_size, seq_len, seed)
    raise ValueError(f"unknown order {kind!r} (known: {', '.join(ORDERS)})")
