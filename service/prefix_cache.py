"""The prefix-state cache: a stateless client's resent history read at session speed.

An RNN's whole past is one fixed-size state (4 KB for the bundled model), so a cache of states at prefix
boundaries turns a resent conversation into a lookup plus the new text. The engine asks at admission for
the longest cached prefix of a fresh request's ids (its start text and prompt) and prefills only the rest;
it offers states back at fixed intervals of the prompt (every `block` tokens from the start), at the end of
the prompt, and at the end of the completion (the state after the prompt and every generated token but the
last, which is what the next request of a conversation resends, exactly, with a character vocabulary).

Keys are a chain of hashes over `block`-token runs of ids, rooted in the artifact's fingerprint (the served
ONNX file's and the tokenizer's sha256): a state is only ever found by the same weights that computed it,
and a replaced model never hits an old entry. An entry at an arbitrary length n is kept under the chain hash
of its last block boundary and the ids after it (its tail). Bounded by bytes, least recently used first out.
One cache per worker, shared by every engine thread and model (thread-safe).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np


def root_of(fingerprint: str) -> bytes:
    return hashlib.blake2b(fingerprint.encode(), digest_size=16).digest()


class PrefixCache:
    def __init__(self, max_bytes: int, block: int = 256):
        self.max_bytes, self.block = max_bytes, block
        self._entries: OrderedDict[tuple[bytes, tuple], list[np.ndarray]] = OrderedDict()
        self._tails: dict[bytes, set[tuple]] = {}  # block-boundary hash -> tails kept under it
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.tokens_saved = self.evicted = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def chain(self, root: bytes, ids: list[int], upto: int) -> list[bytes]:
        """The hashes at block boundaries 0, block, 2 block, ... <= upto of `ids`."""
        hashes, h, k = [root], root, self.block
        arr = np.asarray(ids[: upto - upto % k], dtype=np.int32)
        for pos in range(0, len(arr), k):
            h = hashlib.blake2b(h + arr[pos:pos + k].tobytes(), digest_size=16).digest()
            hashes.append(h)
        return hashes

    def lookup(self, chain: list[bytes], ids: list[int], limit: int) -> tuple[int, list[np.ndarray]] | None:
        """The longest cached prefix ids[:n], n <= limit: (n, the state after it: arrays of (layers, 1, hidden),
        shared, never to be written); None when nothing is cached (a miss)."""
        k, best = self.block, None
        with self._lock:
            for m, h in enumerate(chain):
                for tail in self._tails.get(h, ()):
                    n = m * k + len(tail)
                    if n <= limit and (best is None or n > best[0]) and tuple(ids[m * k:n]) == tail:
                        best = (n, (h, tail))
            if best is None or best[0] == 0:
                self.misses += 1
                return None
            n, key = best
            self._entries.move_to_end(key)
            self.hits += 1
            self.tokens_saved += n
            return n, self._entries[key]

    def offer(self, chain: list[bytes], ids: list[int], n: int, arrays: list[np.ndarray]) -> None:
        """Keep the state after ids[:n] (arrays of (layers, 1, hidden), copied here); `chain` reaches n's last
        block boundary."""
        if not self.enabled or n <= 0:
            return
        m = n // self.block
        key = (chain[m], tuple(ids[m * self.block:n]))
        arrays = [np.array(a, dtype=np.float32, copy=True) for a in arrays]
        size = sum(a.nbytes for a in arrays) + 64 + 8 * len(key[1])
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            self._entries[key] = arrays
            self._tails.setdefault(key[0], set()).add(key[1])
            self.bytes += size
            while self.bytes > self.max_bytes:
                old, old_arrays = self._entries.popitem(last=False)
                self.bytes -= sum(a.nbytes for a in old_arrays) + 64 + 8 * len(old[1])
                tails = self._tails[old[0]]
                tails.discard(old[1])
                if not tails:
                    del self._tails[old[0]]
                self.evicted += 1

    def stats(self) -> dict:
        with self._lock:
            return {"max_bytes": self.max_bytes, "block": self.block, "entries": len(self._entries),
                    "bytes": self.bytes, "hits": self.hits, "misses": self.misses,
                    "tokens_saved": self.tokens_saved, "evicted": self.evicted}
