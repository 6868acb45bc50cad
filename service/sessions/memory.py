"""The in-process session store: an LRU with a time-to-live, a count cap and a byte cap.

For one worker and for tests; it dies with the process. The semantics are the interface's
(service/sessions/__init__.py), held under one lock.
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from . import Claim, OtherModel, SessionBusy, SessionNotFound, SessionState, SessionStore


@dataclass
class _Entry:
    model: str
    state: SessionState | None = None
    version: int = 0
    last_used: float = 0.0
    claim_token: str | None = None
    claim_until: float = 0.0

    def busy(self, now: float) -> bool:
        return self.claim_token is not None and self.claim_until > now

    @property
    def nbytes(self) -> int:
        return self.state.nbytes if self.state is not None else 0


class MemoryStore(SessionStore):
    kind = "memory"

    def __init__(self, **kw):
        super().__init__(**kw)
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.evicted = 0
        self.expired = 0

    # -- under the lock --------------------------------------------------------------------------
    def _drop(self, sid: str) -> None:
        self._bytes -= self._items.pop(sid).nbytes

    def _expire(self, now: float) -> int:
        gone = [sid for sid, e in self._items.items() if not e.busy(now) and now - e.last_used > self.ttl]
        for sid in gone:
            self._drop(sid)
        self.expired += len(gone)
        return len(gone)

    def _evict_for(self, extra_bytes: int, now: float) -> None:
        """Drop least recently used idle sessions until count and bytes fit."""
        for sid in list(self._items):
            if len(self._items) < self.max_sessions and self._bytes + extra_bytes <= self.max_bytes:
                return
            if not self._items[sid].busy(now):
                self._drop(sid)
                self.evicted += 1

    def _get(self, sid: str, now: float) -> _Entry:
        self._expire(now)
        e = self._items.get(sid)
        if e is None:
            raise SessionNotFound(f"session_id {sid!r} is unknown or expired")
        return e

    # -- the interface ---------------------------------------------------------------------------
    def create(self, model: str, expected_bytes: int = 0) -> str:
        with self._lock:
            now = time.time()
            self._expire(now)
            self._evict_for(expected_bytes, now)
            if len(self._items) >= self.max_sessions:
                raise SessionBusy("session store is full of busy sessions; try again later")
            sid = secrets.token_hex(12)
            self._items[sid] = _Entry(model, last_used=now)
            return sid

    def claim(self, sid: str, model: str) -> Claim:
        with self._lock:
            now = time.time()
            e = self._get(sid, now)
            if e.model != model:
                raise OtherModel(f"session_id {sid!r} belongs to model {e.model!r}, not {model!r}")
            if e.busy(now):
                raise SessionBusy(f"session_id {sid!r} is in use by another request",
                                  retry_after=e.claim_until - now)
            e.claim_token, e.claim_until = secrets.token_hex(8), now + self.claim_seconds
            e.last_used = now
            self._items.move_to_end(sid)
            return Claim(sid, model, e.claim_token, e.version, e.state)

    def commit(self, claim: Claim, state: SessionState) -> bool:
        with self._lock:
            now = time.time()
            e = self._items.get(claim.session_id)
            if e is None or e.claim_token != claim.token or e.version != claim.version:
                return False  # deleted, expired, or the claim lapsed and someone else moved on
            self._bytes += state.nbytes - e.nbytes
            e.state, e.version = state, e.version + 1
            e.claim_token, e.last_used = None, now
            self._items.move_to_end(claim.session_id)
            self._evict_for(0, now)
            return True

    def release(self, claim: Claim) -> None:
        with self._lock:
            e = self._items.get(claim.session_id)
            if e is not None and e.claim_token == claim.token:
                e.claim_token, e.last_used = None, time.time()

    def renew(self, claims: list[Claim]) -> None:
        with self._lock:
            until = time.time() + self.claim_seconds
            for c in claims:
                e = self._items.get(c.session_id)
                if e is not None and e.claim_token == c.token:
                    e.claim_until = until

    def delete(self, sid: str) -> None:
        with self._lock:
            self._get(sid, time.time())
            self._drop(sid)

    def expire(self) -> int:
        with self._lock:
            return self._expire(time.time())

    def stats(self) -> dict:
        with self._lock:
            self._expire(time.time())
            return {"sessions": len(self._items), "bytes": self._bytes, "evicted": self.evicted,
                    "expired": self.expired}

    def put(self, sid: str, model: str, state: SessionState, idle: float) -> None:
        """Import a session (from an old dump file), within the caps."""
        with self._lock:
            now = time.time()
            if sid in self._items:
                self._drop(sid)
            self._evict_for(state.nbytes, now)
            self._items[sid] = _Entry(model, state, last_used=now - idle)
            self._bytes += state.nbytes
