"""The session store's contract, the same tests on every backend: memory, SQLite (a real file) and Redis
(a real redis-server on a free loopback port)."""
import time

import numpy as np
import pytest

from service.sessions import SessionBusy, SessionError, SessionNotFound, SessionState, open_store


def state(v: float, next_token: int = 3, seen: int = 10) -> SessionState:
    return SessionState([np.full((1, 4), v, np.float32), np.full((1, 4), -v, np.float32)], next_token, seen)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    url = {"memory": "memory", "sqlite": f"sqlite:///{tmp_path}/s.db"}.get(request.param)
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
    s = open_store(url, ttl=60, max_sessions=100, max_bytes=1 << 20)
    if request.param == "redis":
        s.r.flushdb()
    yield s
    s.close()


@pytest.fixture
def capped(store):
    if store.kind == "redis":
        pytest.skip("Redis keeps its own caps (maxmemory with volatile-lru)")
    return store


def test_a_turn_claims_commits_and_the_next_turn_reads_it(store):
    sid = store.create("lm")
    c = store.claim(sid, "lm")
    assert c.state is None and c.version == 0
    assert store.commit(c, state(1.0))
    c2 = store.claim(sid, "lm")
    assert c2.version == 1 and c2.state.next_token == 3 and np.array_equal(c2.state.arrays[1], -np.ones((1, 4)))
    store.release(c2)  # unchanged
    assert store.claim(sid, "lm").version == 1


def test_one_turn_at_a_time_and_a_lapsed_claim_is_fenced(store):
    store.claim_seconds = 0.2
    sid = store.create("lm")
    first = store.claim(sid, "lm")
    with pytest.raises(SessionBusy) as e:
        store.claim(sid, "lm")
    assert e.value.status == 409 and e.value.retry_after > 0
    time.sleep(0.3)  # the first holder stalls: its claim lapses and another turn moves on
    second = store.claim(sid, "lm")
    assert store.commit(second, state(2.0))
    assert not store.commit(first, state(9.0))  # the stale holder can never overwrite newer state
    assert store.claim(sid, "lm").state.arrays[0][0, 0] == 2.0


def test_renew_keeps_a_long_turn_and_its_session(store):
    store.claim_seconds, store.ttl = 0.3, 1
    sid = store.create("lm")
    c = store.claim(sid, "lm")
    for _ in range(8):  # a turn longer than both the claim and the session's TTL
        time.sleep(0.2)
        store.renew([c])
    store.expire()
    with pytest.raises(SessionBusy):
        store.claim(sid, "lm")
    assert store.commit(c, state(1.0))


def test_wrong_model_unknown_and_deleted(store):
    sid = store.create("lm")
    with pytest.raises(SessionError) as e:
        store.claim(sid, "other")
    assert e.value.status == 400 and "belongs to model" in e.value.message
    with pytest.raises(SessionNotFound):
        store.claim("nope", "lm")
    store.delete(sid)
    with pytest.raises(SessionNotFound):
        store.delete(sid)


def test_delete_while_a_turn_runs_leaks_nothing(store):
    sid = store.create("lm")
    c = store.claim(sid, "lm")
    store.delete(sid)
    assert not store.commit(c, state(1.0))  # the turn's state has nowhere to go
    with pytest.raises(SessionNotFound):
        store.claim(sid, "lm")
    if store.kind != "redis":  # Redis counts by SCAN, cached for a few seconds
        assert store.stats()["sessions"] == 0 and store.stats()["bytes"] == 0


def test_bytes_are_exact_and_caps_evict_least_recently_used(capped):
    store = capped
    store.max_sessions, store.max_bytes = 3, 2 * 32
    ids = []
    for i in range(3):
        sid = store.create("lm")
        store.commit(store.claim(sid, "lm"), state(float(i)))  # 32 bytes each: the third evicts the oldest
        ids.append(sid)
    st = store.stats()
    assert st["sessions"] == 2 and st["bytes"] == 64 and st["evicted"] == 1
    with pytest.raises(SessionNotFound):
        store.claim(ids[0], "lm")


def test_the_count_cap_never_evicts_a_busy_session(capped):
    store = capped
    store.max_sessions = 2
    a, b = store.create("lm"), store.create("lm")
    ca, cb = store.claim(a, "lm"), store.claim(b, "lm")
    with pytest.raises(SessionBusy):
        store.create("lm")  # full of busy sessions
    store.release(ca)
    store.create("lm")  # now the idle one makes room
    with pytest.raises(SessionNotFound):
        store.claim(a, "lm")
    assert store.commit(cb, state(1.0))


def test_idle_sessions_expire(store):
    store.ttl = 1  # Redis TTLs are whole seconds
    sid = store.create("lm")
    time.sleep(1.3)
    store.expire()
    with pytest.raises(SessionNotFound):
        store.claim(sid, "lm")


def test_unknown_store_url_is_a_clear_error():
    with pytest.raises(SessionError, match="unknown store"):
        open_store("postgres://x", ttl=1, max_sessions=1, max_bytes=1)


def test_a_session_is_shared_by_two_clients_of_one_store(store, tmp_path):
    """Two processes' views: a second store object on the same file / server sees the same sessions."""
    if store.kind == "memory":
        pytest.skip("memory is one process's")
    other = open_store(f"sqlite:///{store.path}" if store.kind == "sqlite" else store.describe()["url"],
                       ttl=60, max_sessions=100, max_bytes=1 << 20)
    sid = store.create("lm")
    store.commit(store.claim(sid, "lm"), state(4.0))
    c = other.claim(sid, "lm")
    assert c.version == 1 and c.state.arrays[0][0, 0] == 4.0
    with pytest.raises(SessionBusy):
        store.claim(sid, "lm")
    other.release(c)
    other.delete(sid)
    with pytest.raises(SessionNotFound):
        store.claim(sid, "lm")
    other.close()


def test_state_bytes_round_trip_and_damage_is_detected():
    from service.sessions.codec import CorruptState, decode, encode, encode_fresh
    s = state(1.5, next_token=7, seen=99)
    back, header = decode(encode(s, "lm", 3))
    assert header["model"] == "lm" and header["version"] == 3 and header["shapes"] == [[1, 4], [1, 4]]
    assert back.next_token == 7 and back.tokens_seen == 99 and np.array_equal(back.arrays[1], s.arrays[1])
    assert decode(encode_fresh("lm"))[0] is None
    for bad in (b"junk", encode(s, "lm", 1)[:-3], b"RNNS\xff\xff\xff\x00{}"):
        with pytest.raises(CorruptState):
            decode(bad)


def test_an_old_dump_is_checked_field_by_field(tmp_path):
    """Every entry of an old SIGTERM dump is checked before it is trusted; the store's caps hold."""
    import json as _json
    from service.sessions import dumpfile
    now = time.time()
    good = [np.ones((1, 4), np.float32), np.ones((1, 4), np.float32)]
    entries = {  # id: (meta overrides, arrays)
        "good": ({}, good), "old": ({"idle": 120.0}, good), "future": ({"saved": now + 3600}, good),
        "negative": ({"idle": -50.0}, good), "token": ({"last_token": 10**6}, good), "nulltoken": ({"last_token": None}, good),
        "model": ({"model": "gone"}, good), "shape": ({}, [np.ones((2, 4), np.float32)] * 2),
        "nan": ({}, [np.full((1, 4), np.nan, np.float32)] * 2), "good2": ({}, good),
    }
    arrays, meta = {}, []
    for i, (sid, (over, arr)) in enumerate(entries.items()):
        for k, a in enumerate(arr):
            arrays[f"s{i}_{k}"] = a
        meta.append({"id": sid, "model": "lm", "n": 2, "last_token": 3, "tokens_seen": 5, "idle": 1.0, "saved": now,
                     **over})
    path = tmp_path / "dump.npz"
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.frombuffer(_json.dumps({"format": dumpfile.FORMAT, "sessions": meta}).encode(),
                                           dtype=np.uint8), **arrays)
    store = open_store("memory", ttl=60, max_sessions=1, max_bytes=1 << 20)
    loaded, left_out = dumpfile.load(store, path, {"lm": ([(1, 4), (1, 4)], 50)})
    assert (loaded, left_out) == (2, 8)
    assert store.stats()["sessions"] == 1  # the count cap holds: the newest stays
    with open(tmp_path / "other.npz", "wb") as f:
        np.savez(f, __meta__=np.frombuffer(b'{"format": "something-else/1", "sessions": []}', dtype=np.uint8))
    with pytest.raises(ValueError, match="not an rnnserve session file"):
        dumpfile.load(store, tmp_path / "other.npz", {})


def test_the_sqlite_file_is_private(tmp_path):
    import os
    import stat
    store = open_store(f"sqlite:///{tmp_path}/private/s.db", ttl=60, max_sessions=10, max_bytes=1 << 20)
    store.commit(store.claim(store.create("lm"), "lm"), state(1.0))
    for f in (tmp_path / "private").iterdir():
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    store.close()
