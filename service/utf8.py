"""UTF-8 at the level of a byte-level vocabulary's tokens: which bytes begin a character still unfinished, and
which tokens may come next so that the bytes stay valid UTF-8 (what keeps a stream free of U+FFFD)."""
from __future__ import annotations

import numpy as np


def utf8_tail(data: bytes) -> bytes:
    """The bytes at the end of `data` that begin a character still missing its continuation bytes."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 != 0x80:  # the last byte that is not a continuation byte: a character starts here
            need = 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
            return data[-back:] if back < need else b""
    return b""


class Utf8Guard:
    """Keeps what a byte-level vocabulary generates valid UTF-8, so that no stream ever shows U+FFFD.

    A byte-level model can sample a continuation byte where a character should start, or a lead byte then
    a token that does not continue it: bytes that are not text. Each row carries the bytes of the character
    it has begun (`pending`, at most 3); before sampling, the tokens that would make the row's bytes invalid
    are masked, so the row's probabilities are renormalised over the tokens that keep it text. At a character
    boundary (almost every step) that is one fixed set of tokens (`banned`: lone continuation bytes, bytes
    UTF-8 never uses, merges holding either); a row inside a character gets its own mask, kept per pending
    bytes."""

    def __init__(self, token_bytes: list[bytes]):
        self.token_bytes = token_bytes
        self._allowed: dict[bytes, np.ndarray] = {}
        self.banned = np.flatnonzero(~self.allowed(b""))
        self.tails = [utf8_tail(t) for t in token_bytes]  # the pending bytes after a token fed at a boundary

    def allowed(self, pending: bytes) -> np.ndarray:
        """Which tokens may follow `pending` (bool, one per id)."""
        mask = self._allowed.get(pending)
        if mask is None:
            mask = np.array([_valid_prefix(pending + t) for t in self.token_bytes])
            self._allowed[pending] = mask
        return mask

    def after(self, pending: bytes, token: int) -> bytes:
        return utf8_tail(pending + self.token_bytes[token]) if pending else self.tails[token]

    def pending_of(self, ids: list[int]) -> bytes:
        """The unfinished character at the end of a text's last ids (a session may stop inside one)."""
        return utf8_tail(b"".join(self.token_bytes[i] for i in ids[-4:]))


# the second byte of a character is 80..BF, except after these lead bytes (no overlong forms, no surrogates,
# nothing past U+10FFFF: the Unicode standard's table 3-7)
_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def _valid_prefix(data: bytes) -> bool:
    """True when `data` is valid UTF-8 up to an unfinished character that some bytes can still complete."""
    tail = utf8_tail(data)
    try:
        data[: len(data) - len(tail)].decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not tail:
        return True
    lo, hi = _SECOND_BYTE.get(tail[0], (0x80, 0xBF))
    return 0xC2 <= tail[0] <= 0xF4 and (len(tail) == 1 or lo <= tail[1] <= hi)
