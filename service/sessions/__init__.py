"""Sessions: each conversation's recurrent state, kept between requests, behind one small interface.

An RNN's whole context is its state — a few KB whatever the conversation's length — plus the last
generated token, which has not been fed yet (`SessionState`). A store keeps them by session id with a
time-to-live, a count cap and a byte cap, and lets one request at a time work on a session:

- `claim(sid, model)`: take the session for one turn (its state and version), or SessionBusy (409)
  while another request holds it. A claim is a lease: it lapses after `claim_seconds` unless renewed,
  so a crashed holder never keeps a session forever.
- `commit(claim, state)`: store the state a turn reached and release the claim, atomically, only if
  the claim is still the holder's and the version is the one it read (a fencing number): a holder
  whose claim lapsed can never overwrite newer state. A half-finished turn is never visible.
- `release(claim)`: give the session back unchanged (a failed or refused turn).
- `delete(sid)`, `expire()`, `create(model)`, `stats()`.

Backends (`open_store`): `memory` (one process), `sqlite:///PATH` (embedded, every worker of one
host, crash-safe), `redis://HOST:PORT/DB` (replicas on many hosts). Nothing above this interface knows
which one it has; `blocking` says whether calls do I/O (then the service calls them off its event loop).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SessionState:
    """What a session keeps: the state after everything but `next_token`, and the count fed so far. A state
    belongs to the weights that computed it: `artifact` is their fingerprint (Artifact.fingerprint: the ONNX
    file's and the tokenizer's sha256), and is never fed to other weights ("" for a state kept before
    fingerprints were recorded)."""
    arrays: list[np.ndarray]  # h (and c for an LSTM), each float32 (layers, hidden)
    next_token: int
    tokens_seen: int = 0
    artifact: str = ""
    note: str | None = None  # JSON kept with the state by whoever made the turn (a stored response's record)
    context: list[int] | None = None  # the last ids read, next_token last: where decoding resumes (a character
    # of a byte-level vocabulary split by a turn boundary is finished by the next turn)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays) + (len(self.note) if self.note else 0)


@dataclass
class Claim:
    """One turn's hold on a session: what it read, and the token that proves the hold."""
    session_id: str
    model: str
    token: str
    version: int
    state: SessionState | None  # None: a fresh session, nothing generated yet


class SessionError(Exception):
    status = 400

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class SessionNotFound(SessionError):
    status = 404


class OtherModel(SessionError):
    """The session belongs to another model than the one asked for."""


class SessionBusy(SessionError):
    """Another request holds the session (409), or (on create) the store is full of busy sessions."""
    status = 409


class StoreUnavailable(SessionError):
    """The store cannot be reached right now (503 with Retry-After)."""
    status = 503


class SessionStore:
    """The interface; see the module docstring. Times are wall-clock seconds (shared by processes)."""

    blocking = False  # True when calls do I/O and must stay off the event loop
    kind = "?"

    def __init__(self, ttl: float = 3600.0, max_sessions: int = 10000, max_bytes: int = 256 << 20,
                 claim_seconds: float = 30.0):
        self.ttl, self.max_sessions, self.max_bytes = ttl, max_sessions, max_bytes
        self.claim_seconds = claim_seconds

    def create(self, model: str, expected_bytes: int = 0) -> str: ...
    def claim(self, sid: str, model: str) -> Claim: ...
    def commit(self, claim: Claim, state: SessionState) -> bool: ...
    def release(self, claim: Claim) -> None: ...
    def renew(self, claims: list[Claim]) -> None: ...
    def delete(self, sid: str) -> None: ...
    def expire(self) -> int: ...
    def stats(self) -> dict: ...
    def describe(self) -> dict:
        return {"backend": self.kind, "up": True}
    def close(self) -> None: ...


def open_store(url: str, *, ttl: float, max_sessions: int, max_bytes: int, claim_seconds: float = 30.0,
               **kw) -> SessionStore:
    """A store from its URL: `memory`, `sqlite:///PATH` or `redis://HOST:PORT/DB`."""
    common = dict(ttl=ttl, max_sessions=max_sessions, max_bytes=max_bytes, claim_seconds=claim_seconds)
    if url == "memory":
        from .memory import MemoryStore
        return MemoryStore(**common)
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore
        return SQLiteStore(url[len("sqlite:///"):], **common)  # sqlite:///relative/path, sqlite:////absolute
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisStore
        return RedisStore(url, **common)
    raise SessionError(f"--sessions {url!r}: unknown store (use memory, sqlite:///PATH or redis://HOST:PORT/DB)")
