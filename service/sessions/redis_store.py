"""Sessions in Redis, shared by replicas on many hosts: any replica continues any session exactly.

Keys carry the session id as a hash tag, so a session's keys share a slot and the store runs on a
Redis Cluster too: `rnnserve:{SID}:state` (codec bytes: a header naming model, version, dtype and
shapes, then the arrays; `SET ... EX ttl`, the TTL refreshed on use) and `rnnserve:{SID}:claim` (the
claim token, `SET NX PX`); a running turn renews both, so a session never expires under a turn. Claim, commit, release and renew are Lua scripts, each atomic on the
session's two keys: commit stores the new state and drops the claim only if the claim is still the
holder's and the stored version is the one it read (the fencing number), so a holder whose claim lapsed
can never overwrite newer state.

Redis down: every call raises StoreUnavailable at once (503 with Retry-After to the client: never a
wrong or silently fresh state); a background ping notices when it is back. The caps are Redis's own:
run it with `maxmemory` and `maxmemory-policy volatile-lru` (every key has a TTL); /info counts the
sessions with SCAN, cached for a few seconds.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from urllib.parse import urlparse

import redis

from . import (Claim, OtherModel, SessionBusy, SessionError, SessionNotFound, SessionState, SessionStore,
               StoreUnavailable)
from .codec import CorruptState, decode, encode, encode_fresh

log = logging.getLogger("rnnserve")

# A state value's version, read from its header: MAGIC (4 bytes), header length (u32 LE), JSON header.
_VERSION = """
local function version(v)
  local n = struct.unpack('<I4', string.sub(v, 5, 8))
  return tonumber(cjson.decode(string.sub(v, 9, 8 + n))['version'])
end
"""
CLAIM = """
local cur = redis.call('GET', KEYS[1])
if not cur then return {0} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {-1, redis.call('PTTL', KEYS[2])}
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, cur}
"""
COMMIT = _VERSION + """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if version(cur) ~= tonumber(ARGV[2]) then return -2 end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
if holder then redis.call('DEL', KEYS[2]) end
return 1
"""
RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('PEXPIRE', KEYS[2], ARGV[2])
"""


def keys(sid: str) -> tuple[str, str]:
    return f"rnnserve:{{{sid}}}:state", f"rnnserve:{{{sid}}}:claim"


class RedisStore(SessionStore):
    kind = "redis"
    blocking = True

    def __init__(self, url: str, **kw):
        super().__init__(**kw)
        u = urlparse(url)
        self.where = f"{u.hostname or 'localhost'}:{u.port or 6379}/{(u.path or '/0').lstrip('/') or '0'}"
        self.r = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2.0, retry_on_timeout=False,
                                      health_check_interval=0)
        self._claim, self._commit = self.r.register_script(CLAIM), self.r.register_script(COMMIT)
        self._release, self._renew = self.r.register_script(RELEASE), self.r.register_script(RENEW)
        self.up = True
        self._count = (0.0, {"sessions": 0, "bytes": 0})
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="redis-ping", daemon=True).start()

    # -- availability -----------------------------------------------------------------------------
    def _call(self, fn, *args, **kw):
        try:
            out = fn(*args, **kw)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self.up = False
            raise StoreUnavailable(f"session store redis://{self.where} is unavailable ({e}); retry shortly",
                                   retry_after=1) from None
        except redis.ResponseError as e:
            raise StoreUnavailable(f"session store redis://{self.where}: {e}", retry_after=1) from None
        self.up = True
        return out

    def _watch(self) -> None:
        """Ping every second while down, every 5 s while up: /info and the gauge show the store's state."""
        while not self._stop.wait(1.0 if not self.up else 5.0):
            try:
                self.r.ping()
                if not self.up:
                    log.info('{"event": "session_store_back", "store": "redis"}')
                self.up = True
            except redis.RedisError:
                self.up = False

    # -- the interface ----------------------------------------------------------------------------
    def create(self, model: str, expected_bytes: int = 0) -> str:
        sid = secrets.token_hex(12)
        self._call(self.r.set, keys(sid)[0], encode_fresh(model), nx=True, ex=int(self.ttl))
        return sid

    def claim(self, sid: str, model: str) -> Claim:
        token = secrets.token_hex(8)
        out = self._call(self._claim, keys=keys(sid), args=[token, int(self.claim_seconds * 1000), int(self.ttl)])
        if out[0] == 0:
            raise SessionNotFound(f"session_id {sid!r} is unknown or expired")
        if out[0] == -1:
            raise SessionBusy(f"session_id {sid!r} is in use by another request", retry_after=max(0, out[1]) / 1000)
        try:
            state, header = decode(out[1])
        except CorruptState as e:
            self.release(Claim(sid, model, token, 0, None))
            raise SessionError(f"session_id {sid!r} holds a state this server cannot read ({e})") from None
        if header["model"] != model:
            self.release(Claim(sid, model, token, header["version"], None))
            raise OtherModel(f"session_id {sid!r} belongs to model {header['model']!r}, not {model!r}")
        return Claim(sid, model, token, int(header["version"]), state)

    def commit(self, claim: Claim, state: SessionState) -> bool:
        blob = encode(state, claim.model, claim.version + 1)
        out = self._call(self._commit, keys=keys(claim.session_id),
                         args=[claim.token, claim.version, blob, int(self.ttl)])
        return out == 1

    def release(self, claim: Claim) -> None:
        self._call(self._release, keys=keys(claim.session_id), args=[claim.token, int(self.ttl)])

    def renew(self, claims: list[Claim]) -> None:
        if not claims:
            return
        pipe = self.r.pipeline(transaction=False)
        for c in claims:
            self._renew(keys=keys(c.session_id), args=[c.token, int(self.claim_seconds * 1000), int(self.ttl)],
                        client=pipe)
        self._call(pipe.execute)

    def delete(self, sid: str) -> None:
        state, claim = keys(sid)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(state)
        pipe.delete(claim)
        if not self._call(pipe.execute)[0]:
            raise SessionNotFound(f"session_id {sid!r} is unknown or expired")

    def expire(self) -> int:
        return 0  # Redis expires keys by their TTL

    def stats(self) -> dict:
        """Sessions and bytes of state values, counted with SCAN (cached 5 s: this walks every key)."""
        t, cached = self._count
        if time.monotonic() - t < 5:
            return cached
        n, size = 0, 0
        for batch in self._scan():
            n += len(batch)
            pipe = self.r.pipeline(transaction=False)
            for k in batch:
                pipe.strlen(k)
            size += sum(self._call(pipe.execute))
        stats = {"sessions": n, "bytes": size}
        self._count = (time.monotonic(), stats)
        return stats

    def _scan(self):
        cursor = 0
        while True:
            cursor, batch = self._call(self.r.scan, cursor, match="rnnserve:{*}:state", count=1000)
            if batch:
                yield batch
            if cursor == 0:
                return

    def put(self, sid: str, model: str, state: SessionState, idle: float) -> None:
        ttl = max(1, int(self.ttl - idle))
        self._call(self.r.set, keys(sid)[0], encode(state, model, 0), ex=ttl)

    def describe(self) -> dict:
        return {"backend": "redis", "url": f"redis://{self.where}", "up": self.up}

    def close(self) -> None:
        self._stop.set()
        self.r.close()
