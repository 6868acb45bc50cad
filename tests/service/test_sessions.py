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
