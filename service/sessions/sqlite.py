"""The embedded session store: one SQLite file shared by every worker of a host, crash-safe.

SQLite in WAL mode (stdlib `sqlite3`): a turn's state is committed in one transaction when the turn
ends, so it survives `kill -9` of any worker or of the whole server (WAL with synchronous=NORMAL:
every committed transaction is in the WAL file before the call returns; a power cut can lose the
last few turns but never corrupts the file). Claims are columns of the session's row: token, lease
end, holder (host:pid:start time), so the supervisor can release a dead worker's claims at once. The count and
bytes of all sessions are kept exact by triggers in a one-row `totals` table, so the caps hold
across workers without scanning. The file is created 0600.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from pathlib import Path

from . import (Claim, OtherModel, SessionBusy, SessionError, SessionNotFound, SessionState, SessionStore,
               StoreUnavailable)
from .codec import CorruptState, decode, encode

log = logging.getLogger("rnnserve")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    state BLOB,                           -- codec.encode bytes; NULL for a fresh session
    nbytes INTEGER NOT NULL DEFAULT 0,    -- bytes of recurrent state (the arrays): the byte cap counts these
    version INTEGER NOT NULL DEFAULT 0,   -- +1 per committed turn: the fencing number
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    claim_token TEXT,
    claim_until REAL NOT NULL DEFAULT 0,
    claim_holder TEXT
);
CREATE INDEX IF NOT EXISTS sessions_last_used ON sessions(last_used);
CREATE INDEX IF NOT EXISTS sessions_holder ON sessions(claim_holder);
CREATE TABLE IF NOT EXISTS totals (
    k INTEGER PRIMARY KEY CHECK (k = 0),
    sessions INTEGER NOT NULL, bytes INTEGER NOT NULL, evicted INTEGER NOT NULL, expired INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0, 0, 0);
CREATE TRIGGER IF NOT EXISTS totals_insert AFTER INSERT ON sessions BEGIN
    UPDATE totals SET sessions = sessions + 1, bytes = bytes + NEW.nbytes WHERE k = 0; END;
CREATE TRIGGER IF NOT EXISTS totals_delete AFTER DELETE ON sessions BEGIN
    UPDATE totals SET sessions = sessions - 1, bytes = bytes - OLD.nbytes WHERE k = 0; END;
CREATE TRIGGER IF NOT EXISTS totals_update AFTER UPDATE OF nbytes ON sessions BEGIN
    UPDATE totals SET bytes = bytes + NEW.nbytes - OLD.nbytes WHERE k = 0; END;
"""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None when it is gone or a zombie): with the pid
    it names one process, even after the pid is reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def holder_id(pid: int | None = None) -> str:
    """Who holds a claim: host:pid:start-time."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def holder_alive(holder: str) -> bool:
    """False only for a holder of this host whose process is gone (a zombie counts as gone)."""
    host, _, rest = holder.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host's worker: its claim lapses on its own
    return _start_time(int(pid)) == start


class SQLiteStore(SessionStore):
    kind = "sqlite"
    blocking = True

    def __init__(self, path: str | Path, **kw):
        super().__init__(**kw)
        self.path = Path(path)
        self.holder = holder_id()
        self._lock = threading.Lock()
        self._db = self._open()

    # -- opening: a clear error for an unusable place, a corrupt file set aside ----------------------
    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SessionError(f"session store {self.path}: cannot create its folder ({e.strerror})") from None
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            if not _is_corrupt(e):
                raise SessionError(f"session store {self.path}: {e} (is the folder writable by this user?)") from None
            aside = self.path.with_name(self.path.name + f".corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            log.error(json.dumps({"event": "session_store_corrupt", "path": str(self.path), "moved_to": str(aside),
                                  "error": str(e)}))
            try:
                return self._connect()
            except sqlite3.DatabaseError as e2:
                raise SessionError(f"session store {self.path}: {e2}") from None

    def _connect(self) -> sqlite3.Connection:
        old = os.umask(0o077)  # the file and its -wal/-shm: readable by this user only
        try:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 10000")
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.OperationalError("cannot switch to WAL mode")
            db.execute("PRAGMA synchronous = NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({check})")
            db.executescript(SCHEMA)
            return db
        finally:
            os.umask(old)

    def _tx(self):
        return _Transaction(self)

    # -- under a transaction ----------------------------------------------------------------------
    def _expire(self, db, now: float) -> int:
        n = db.execute("DELETE FROM sessions WHERE last_used < ? AND claim_until < ?", (now - self.ttl, now)).rowcount
        if n:
            db.execute("UPDATE totals SET expired = expired + ? WHERE k = 0", (n,))
        return n

    def _evict_for(self, db, extra_bytes: int, extra_count: int, now: float) -> None:
        """Drop least recently used idle sessions until count and bytes fit."""
        count, nbytes = db.execute("SELECT sessions, bytes FROM totals WHERE k = 0").fetchone()
        if count + extra_count <= self.max_sessions and nbytes + extra_bytes <= self.max_bytes:
            return
        idle = db.execute("SELECT id, nbytes FROM sessions WHERE claim_until < ? ORDER BY last_used", (now,))
        gone = []
        for sid, b in idle:
            if count + extra_count <= self.max_sessions and nbytes + extra_bytes <= self.max_bytes:
                break
            gone.append((sid,))
            count, nbytes = count - 1, nbytes - b
        db.executemany("DELETE FROM sessions WHERE id = ?", gone)
        db.execute("UPDATE totals SET evicted = evicted + ? WHERE k = 0", (len(gone),))

    def _row(self, db, sid: str, now: float):
        self._expire(db, now)
        row = db.execute("SELECT model, state, version, claim_until FROM sessions WHERE id = ?", (sid,)).fetchone()
        if row is None:
            raise SessionNotFound(f"session_id {sid!r} is unknown or expired")
        return row

    # -- the interface ----------------------------------------------------------------------------
    def create(self, model: str, expected_bytes: int = 0) -> str:
        with self._tx() as db:
            now = time.time()
            self._expire(db, now)
            self._evict_for(db, expected_bytes, 1, now)
            if db.execute("SELECT sessions FROM totals WHERE k = 0").fetchone()[0] >= self.max_sessions:
                raise SessionBusy("session store is full of busy sessions; try again later")
            sid = secrets.token_hex(12)
            db.execute("INSERT INTO sessions (id, model, created, last_used) VALUES (?, ?, ?, ?)",
                       (sid, model, now, now))
            return sid

    def claim(self, sid: str, model: str) -> Claim:
        with self._tx() as db:
            now = time.time()
            row_model, blob, version, claim_until = self._row(db, sid, now)
            if row_model != model:
                raise OtherModel(f"session_id {sid!r} belongs to model {row_model!r}, not {model!r}")
            if claim_until > now:
                raise SessionBusy(f"session_id {sid!r} is in use by another request", retry_after=claim_until - now)
            token = secrets.token_hex(8)
            db.execute("UPDATE sessions SET claim_token = ?, claim_until = ?, claim_holder = ?, last_used = ? "
                       "WHERE id = ?", (token, now + self.claim_seconds, self.holder, now, sid))
        state = None
        if blob is not None:
            try:
                state = decode(blob)[0]
            except CorruptState as e:  # never hand a damaged state to a batch: start the text afresh
                log.error(json.dumps({"event": "session_state_corrupt", "session_id": sid, "error": str(e)}))
        return Claim(sid, model, token, version, state)

    def commit(self, claim: Claim, state: SessionState) -> bool:
        blob = encode(state, claim.model, claim.version + 1)
        with self._tx() as db:
            now = time.time()
            n = db.execute("UPDATE sessions SET state = ?, nbytes = ?, version = version + 1, claim_token = NULL, "
                           "claim_until = 0, claim_holder = NULL, last_used = ? "
                           "WHERE id = ? AND claim_token = ? AND version = ?",
                           (blob, state.nbytes, now, claim.session_id, claim.token, claim.version)).rowcount
            if n:
                self._evict_for(db, 0, 0, now)
            return bool(n)

    def release(self, claim: Claim) -> None:
        with self._tx() as db:
            db.execute("UPDATE sessions SET claim_token = NULL, claim_until = 0, claim_holder = NULL, last_used = ? "
                       "WHERE id = ? AND claim_token = ?", (time.time(), claim.session_id, claim.token))

    def renew(self, claims: list[Claim]) -> None:
        if not claims:
            return
        with self._tx() as db:
            until = time.time() + self.claim_seconds
            db.executemany("UPDATE sessions SET claim_until = ? WHERE id = ? AND claim_token = ?",
                           [(until, c.session_id, c.token) for c in claims])

    def release_holder(self, holder: str) -> int:
        """Release every claim held by `holder` (host:pid:start), a worker known to be dead."""
        with self._tx() as db:
            return db.execute("UPDATE sessions SET claim_token = NULL, claim_until = 0, claim_holder = NULL "
                              "WHERE claim_holder = ?", (holder,)).rowcount

    def holders(self) -> set[str]:
        with self._lock:
            return {h for (h,) in self._db.execute("SELECT DISTINCT claim_holder FROM sessions "
                                                   "WHERE claim_holder IS NOT NULL")}

    def delete(self, sid: str) -> None:
        with self._tx() as db:
            self._row(db, sid, time.time())
            db.execute("DELETE FROM sessions WHERE id = ?", (sid,))

    def expire(self) -> int:
        with self._tx() as db:
            return self._expire(db, time.time())

    def stats(self) -> dict:
        self.expire()
        with self._lock:
            sessions, nbytes, evicted, expired = self._db.execute(
                "SELECT sessions, bytes, evicted, expired FROM totals WHERE k = 0").fetchone()
        return {"sessions": sessions, "bytes": nbytes, "evicted": evicted, "expired": expired}

    def put(self, sid: str, model: str, state: SessionState, idle: float) -> None:
        """Import a session (from an old dump file), least recently used first when over the caps."""
        with self._tx() as db:
            now = time.time()
            db.execute("DELETE FROM sessions WHERE id = ?", (sid,))
            self._evict_for(db, state.nbytes, 1, now)
            db.execute("INSERT INTO sessions (id, model, state, nbytes, version, created, last_used) "
                       "VALUES (?, ?, ?, ?, 0, ?, ?)", (sid, model, encode(state, model, 0), state.nbytes, now,
                                                        now - idle))

    def describe(self) -> dict:
        return {"backend": "sqlite", "path": str(self.path), "up": True}

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the store's lock (one connection per process, many threads)."""

    def __init__(self, store: SQLiteStore):
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        try:
            self.store._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            self.store._lock.release()
            raise StoreUnavailable(f"session store {self.store.path}: {e}", retry_after=1) from None
        return self.store._db

    def __exit__(self, kind, value, tb) -> None:
        try:
            self.store._db.execute("COMMIT" if kind is None else "ROLLBACK")
        except sqlite3.Error as e:
            if kind is None:
                raise StoreUnavailable(f"session store {self.store.path}: {e}", retry_after=1) from None
        finally:
            self.store._lock.release()
        if isinstance(value, sqlite3.Error):
            raise StoreUnavailable(f"session store {self.store.path}: {value}", retry_after=1) from value


def _is_corrupt(e: Exception) -> bool:
    text = str(e).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text
