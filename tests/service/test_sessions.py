"""The session store's contract, on the in-memory backend (the same tests run on every backend)."""
import time

import numpy as np
import pytest

from service.sessions import SessionBusy, SessionError, SessionNotFound, SessionState, open_store


def state(v: float, next_token: int = 3, seen: int = 10) -> SessionState:
    return SessionState([np.full((1, 4), v, np.float32), np.full((1, 4), -v, np.float32)], next_token, seen)


@pytest.fixture
def store():
    return open_store("memory", ttl=60, max_sessions=100, max_bytes=1 << 20)


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


def test_renew_keeps_a_long_turn(store):
    store.claim_seconds = 0.2
    sid = store.create("lm")
    c = store.claim(sid, "lm")
    for _ in range(3):
        time.sleep(0.1)
        store.renew([c])
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
    assert store.stats()["sessions"] == 0 and store.stats()["bytes"] == 0


def test_bytes_are_exact_and_caps_evict_least_recently_used(store):
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


def test_the_count_cap_never_evicts_a_busy_session(store):
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
    store.ttl = 0.2
    sid = store.create("lm")
    time.sleep(0.3)
    assert store.expire() == 1
    with pytest.raises(SessionNotFound):
        store.claim(sid, "lm")


def test_unknown_store_url_is_a_clear_error():
    with pytest.raises(SessionError, match="unknown store"):
        open_store("postgres://x", ttl=1, max_sessions=1, max_bytes=1)
