"""Replicas behind a real balancer, sessions in a real Redis: deploy/local/cluster.py, all on 127.0.0.1."""
import json
import os
import shutil
import signal
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import free_port


def _need(*exes):
    missing = [e for e in exes if not (shutil.which(e) or os.path.exists(f"/usr/sbin/{e}"))]
    if missing:
        if os.environ.get("CI"):
            raise RuntimeError(f"{', '.join(missing)} not installed (.ci/run installs them)")
        pytest.skip(f"needs {', '.join(missing)} (apt-get install -y redis-server haproxy)")


@pytest.fixture(scope="module")
def cluster(artifacts, tmp_path_factory):
    _need("redis-server", "haproxy")
    from deploy.local.cluster import Cluster
    c = Cluster(replicas=2, port=free_port(), workdir=str(tmp_path_factory.mktemp("cluster")),
                env={"RNNSERVE_MODELS": artifacts, "RNNSERVE_THREADS": 1, "RNNSERVE_SESSION_TTL": 3,
                     "RNNSERVE_SESSION_CLAIM_SECONDS": 2, "RNNSERVE_DRAIN_SECONDS": 10})
    c.start()
    yield c
    c.stop()


def post(c, **body):
    """Through the balancer, on a fresh connection: (response, the replica that answered)."""
    r = httpx.post(c.url + "/generate", json={"stream": False, "temperature": 0, **body}, timeout=60)
    return r, r.headers.get("x-rnnserve-replica")


def new_session(c, **body) -> str:
    r = httpx.post(c.url + "/sessions", json=body, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def redis_version(c, sid) -> int:
    import redis
    blob = redis.Redis.from_url(c.redis_url).get(f"rnnserve:{{{sid}}}:state")
    (n,) = struct.unpack_from("<I", blob, 4)
    return json.loads(blob[8:8 + n])["version"]


def test_a_conversation_alternates_replicas_and_equals_one_generation(cluster):
    whole = post(cluster, prompt="the cat sat", max_tokens=100)[0].json()["text"]
    sid = new_session(cluster)
    text, replicas = "", []
    for turn in range(10):
        r, replica = post(cluster, prompt="the cat sat" if turn == 0 else "", max_tokens=10, session_id=sid)
        assert r.status_code == 200, r.text
        text += r.json()["text"]
        replicas.append(replica)
    assert text == whole
    assert set(replicas) == {"replica-0", "replica-1"}
    assert all(a != b for a, b in zip(replicas, replicas[1:]))  # round robin: every turn on the other one
    assert redis_version(cluster, sid) == 10


def test_the_session_id_header_names_the_session(cluster):
    sid = new_session(cluster)
    r = httpx.post(cluster.url + "/generate", json={"prompt": "x", "max_tokens": 3, "stream": False},
                   headers={"X-Session-ID": sid}, timeout=30)
    assert r.status_code == 200 and r.json()["session_id"] == sid and redis_version(cluster, sid) == 1
    r = httpx.post(cluster.url + "/generate", json={"session_id": sid, "stream": False},
                   headers={"X-Session-ID": "another"}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["field"] == "session_id"


def test_two_concurrent_continuations_on_two_replicas(cluster):
    sid = new_session(cluster, model="wide")
    before = redis_version(cluster, sid)

    def go(prompt):
        return httpx.post(cluster.url + "/generate", json={"prompt": prompt, "max_tokens": 2000, "model": "wide",
                                                            "session_id": sid, "stream": False}, timeout=60)
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(go, ["a", "b"])
    assert sorted([a.status_code, b.status_code]) == [200, 409]
    assert {a.headers["x-rnnserve-replica"], b.headers["x-rnnserve-replica"]} == {"replica-0", "replica-1"}
    assert redis_version(cluster, sid) == before + 1


def test_a_short_ttl_expires_the_session_on_every_replica(cluster):
    sid = new_session(cluster)
    assert post(cluster, prompt="x", max_tokens=2, session_id=sid)[0].status_code == 200
    time.sleep(3.5)
    seen = set()
    for _ in range(4):
        r, replica = post(cluster, prompt="", max_tokens=2, session_id=sid)
        assert r.status_code == 404, r.text
        seen.add(replica)
    assert seen == {"replica-0", "replica-1"}


def test_redis_down_sessions_503_sessionless_200_and_back_without_restarts(cluster):
    cluster.stop_redis()
    try:
        r = httpx.post(cluster.url + "/sessions", json={}, timeout=30)
        assert r.status_code == 503 and "retry-after" in r.headers
        for _ in range(2):
            r, _ = post(cluster, prompt="x", max_tokens=2, session_id="abc")
            assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["field"] == "session_id"
            r, _ = post(cluster, prompt="x", max_tokens=2)
            assert r.status_code == 200
        assert httpx.post(cluster.url + "/classify", json={"text": "aeiou"}, timeout=30).status_code == 200
        assert httpx.get(cluster.url + "/health", timeout=30).status_code == 200  # readiness ignores the store
        deadline = time.time() + 10
        while httpx.get(cluster.url + "/info", timeout=30).json()["store"]["up"] and time.time() < deadline:
            time.sleep(0.2)
        assert "rnnserve_session_store_up 0.0" in httpx.get(cluster.url + "/metrics", timeout=30).text
    finally:
        cluster.start_redis()
    deadline = time.time() + 10
    while True:  # the replicas reconnect by themselves
        r = httpx.post(cluster.url + "/sessions", json={}, timeout=30)
        if r.status_code == 201 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 201
    sid = r.json()["session_id"]
    for _ in range(2):
        assert post(cluster, prompt="x", max_tokens=2, session_id=sid)[0].status_code == 200


def test_kill_9_of_a_replica_mid_turn_the_other_continues_from_the_last_commit(cluster):
    whole = post(cluster, prompt="rain fell", max_tokens=30)[0].json()["text"]
    sid = new_session(cluster)
    first, _ = post(cluster, prompt="rain fell", max_tokens=15, session_id=sid)
    victim = None
    with httpx.stream("POST", cluster.url + "/generate", json={"prompt": "", "max_tokens": 4096, "model": "tinylm",
                                                               "session_id": sid, "temperature": 0},
                      timeout=30) as r:
        victim = r.headers["x-rnnserve-replica"]
        assert next(r.iter_lines()).startswith("data: {")
        cluster.kill_replica(int(victim[-1]))  # kill -9 of that replica, mid-turn
    try:
        deadline = time.time() + 30
        while True:  # the dead holder's claim lapses (RNNSERVE_SESSION_CLAIM_SECONDS=2): 409 + Retry-After until then
            r, replica = post(cluster, prompt="", max_tokens=15, session_id=sid)
            if r.status_code != 409 or time.time() > deadline:
                break
            time.sleep(float(r.headers["retry-after"]))
        assert r.status_code == 200, r.text
        assert replica != victim
        assert first.json()["text"] + r.json()["text"] == whole
    finally:
        cluster.start_replica(int(victim[-1]))


def test_sigterm_on_a_replica_under_load_breaks_no_stream(cluster):
    stop, results, errors = threading.Event(), [], []

    def client(i):
        while not stop.is_set():
            try:
                with httpx.stream("POST", cluster.url + "/generate", json={"max_tokens": 200, "seed": i},
                                  timeout=30) as r:
                    if r.status_code != 200:
                        errors.append(f"status {r.status_code}: {r.read()[:200]}")
                        continue
                    lines = [l for l in r.iter_lines() if l]
                results.append((lines[-1], json.loads(lines[-2][6:])))
            except httpx.HTTPError as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    cluster.kill_replica(0, signal.SIGTERM)
    cluster.replicas[0].wait(30)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    try:
        assert cluster.replicas[0].returncode == 0
        assert not errors, errors[:5]
        assert len(results) > 16
        assert all(last == "data: [DONE]" and final.get("finish_reason") == "length" for last, final in results)
    finally:
        cluster.start_replica(0)
