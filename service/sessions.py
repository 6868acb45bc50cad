"""The session store: each conversation's recurrent state, kept between requests.

An RNN's whole context is its state — a few KB whatever the conversation's
length — plus the last generated token, which has not been fed yet. Sessions
live in an LRU with a time-to-live and a memory cap; a session in use by one
request is busy, and a second request on it is refused (409) rather than
allowed to corrupt the state.
"""
from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class SessionError(Exception):
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SessionNotFound(SessionError):
    status = 404


class SessionBusy(SessionError):
    status = 409


@dataclass
class Session:
    id: str
    model: str
    state: list[np.ndarray] | None = None  # each (layers, hidden) float32; None = fresh
    last_token: int | None = None          # generated but not yet fed
    tokens_seen: int = 0
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False


class SessionStore:
    def __init__(self, ttl: float = 3600.0, max_sessions: int = 10000, max_bytes: int = 256 << 20):
        self.ttl, self.max_sessions, self.max_bytes = ttl, max_sessions, max_bytes
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.evicted = 0
        self.expired = 0

    @staticmethod
    def state_bytes(s: Session) -> int:
        return sum(a.nbytes for a in s.state) if s.state is not None else 0

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, s in self._items.items() if not s.busy and now - s.last_used > self.ttl]:
            self._drop(sid)
            self.expired += 1

    def _drop(self, sid: str) -> None:
        s = self._items.pop(sid)
        self._bytes -= self.state_bytes(s)

    def _evict_for(self, extra_bytes: int) -> None:
        """Drop least recently used idle sessions until count and bytes fit."""
        for sid in list(self._items):
            if len(self._items) < self.max_sessions and self._bytes + extra_bytes <= self.max_bytes:
                return
            if not self._items[sid].busy:
                self._drop(sid)
                self.evicted += 1

    def create(self, model: str, expected_bytes: int = 0) -> Session:
        with self._lock:
            self._expire(time.monotonic())
            self._evict_for(expected_bytes)
            if len(self._items) >= self.max_sessions:
                raise SessionBusy("session store is full of busy sessions; try again later")
            s = Session(secrets.token_hex(12), model)
            self._items[s.id] = s
            return s

    def acquire(self, sid: str, model: str) -> Session:
        with self._lock:
            self._expire(time.monotonic())
            s = self._items.get(sid)
            if s is None:
                raise SessionNotFound(f"session_id {sid!r} is unknown or expired")
            if s.model != model:
                raise SessionError(f"session_id {sid!r} belongs to model {s.model!r}, not {model!r}")
            if s.busy:
                raise SessionBusy(f"session_id {sid!r} is in use by another request")
            s.busy = True
            self._items.move_to_end(sid)
            return s

    def release(self, s: Session, state: list[np.ndarray] | None = None, last_token: int | None = None,
                fed: int = 0) -> None:
        with self._lock:
            if state is not None:
                self._bytes += sum(a.nbytes for a in state) - self.state_bytes(s)
                s.state, s.last_token = state, last_token
                s.tokens_seen += fed
            s.busy = False
            s.last_used = time.monotonic()
            if s.id in self._items:
                self._items.move_to_end(s.id)
                self._evict_for(0)

    def delete(self, sid: str) -> None:
        with self._lock:
            if sid not in self._items:
                raise SessionNotFound(f"session_id {sid!r} is unknown or expired")
            self._drop(sid)

    def stats(self) -> dict:
        with self._lock:
            self._expire(time.monotonic())
            return {"sessions": len(self._items), "bytes": self._bytes, "evicted": self.evicted,
                    "expired": self.expired}

    # -- persistence: written at shutdown, read at start ------------------------------------
    def save(self, path: str | Path) -> int:
        """Write idle sessions with state to `path` atomically (temp file + rename)."""
        path = Path(path)
        with self._lock:
            now_mono, now = time.monotonic(), time.time()
            items = [s for s in self._items.values() if s.state is not None]
            arrays, meta = {}, []
            for i, s in enumerate(items):
                for k, a in enumerate(s.state):
                    arrays[f"s{i}_{k}"] = a
                meta.append({"id": s.id, "model": s.model, "n": len(s.state), "last_token": s.last_token,
                             "tokens_seen": s.tokens_seen, "created": s.created,
                             "idle": now_mono - s.last_used, "saved": now})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, __meta__=np.frombuffer(json.dumps({"format": "rnnserve-sessions/1", "sessions": meta})
                                               .encode(), dtype=np.uint8), **arrays)
        os.replace(tmp, path)
        return len(meta)

    def load(self, path: str | Path, state_shapes: dict[str, list[tuple]]) -> int:
        """Read sessions saved by `save`. Raises ValueError for a corrupt or foreign file."""
        path = Path(path)
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            if meta.get("format") != "rnnserve-sessions/1":
                raise ValueError(f"{path}: not an rnnserve session file")
            loaded = []
            for i, m in enumerate(meta["sessions"]):
                shapes = state_shapes.get(m["model"])
                state = [z[f"s{i}_{k}"] for k in range(m["n"])]
                if shapes is None or [a.shape for a in state] != shapes:
                    continue  # a model no longer served, or a different shape: leave it out
                age = time.time() - m["saved"] + m["idle"]
                if age > self.ttl:
                    continue
                s = Session(m["id"], m["model"], [a.astype(np.float32) for a in state], m["last_token"],
                            m["tokens_seen"], m["created"], time.monotonic() - age)
                loaded.append(s)
        with self._lock:
            for s in loaded:
                self._items[s.id] = s
                self._bytes += self.state_bytes(s)
        return len(loaded)
