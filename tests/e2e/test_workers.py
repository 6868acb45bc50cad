"""Worker processes on one port, sessions in the embedded SQLite store: real processes, sockets and file."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import ROOT, Server, during_a_turn, free_port

TURNS, PER_TURN = 16, 8


def post(url, **body):
    """A request on a fresh connection (so the kernel picks the worker anew)."""
    r = httpx.post(url + "/generate", json={"stream": False, "temperature": 0, **body}, timeout=60)
    return r, r.headers.get("x-rnnserve-worker")


@pytest.fixture(scope="module")
def two(artifacts, tmp_path_factory):
    s = Server(artifacts, RNNSERVE_WORKERS=2, RNNSERVE_STATE_DIR=tmp_path_factory.mktemp("two"))
    yield s
    s.stop()


def test_a_conversation_moves_between_workers_and_equals_one_generation(two):
    whole = post(two.url, prompt="the cat sat", max_tokens=TURNS * PER_TURN)[0].json()["text"]
    sid = httpx.post(two.url + "/sessions", json={}).json()["session_id"]
    text, seen = "", set()
    for turn in range(TURNS):
        r, worker = post(two.url, prompt="the cat sat" if turn == 0 else "", max_tokens=PER_TURN, session_id=sid)
        assert r.status_code == 200, r.text
        text += r.json()["text"]
        seen.add(worker)
    assert text == whole
    assert seen == {"0", "1"}  # both workers served turns (2^-15 odds of one worker by chance)


def test_two_concurrent_continuations_get_exactly_one_409(two):
    sid = httpx.post(two.url + "/sessions", json={"model": "wide"}).json()["session_id"]
    # the second turn goes on a fresh connection, so either worker may take it
    losers, final = during_a_turn(two.url, sid, lambda: [httpx.post(
        two.url + "/generate", json={"prompt": "b", "max_tokens": 5, "session_id": sid, "model": "wide",
                                     "stream": False}, timeout=60) for _ in range(4)])
    assert final["finish_reason"] == "length" and [r.status_code for r in losers] == [409] * 4
    assert all(r.headers["x-rnnserve-worker"] in ("0", "1") for r in losers)
    assert all(r.json()["error"]["field"] == "session_id" and "retry-after" in r.headers for r in losers)


def test_delete_and_expiry_are_seen_by_every_worker(artifacts, tmp_path):
    s = Server(artifacts, RNNSERVE_WORKERS=2, RNNSERVE_SESSION_TTL=2, RNNSERVE_STATE_DIR=tmp_path)
    try:
        deleted = httpx.post(s.url + "/sessions", json={}).json()["session_id"]
        assert post(s.url, prompt="x", max_tokens=2, session_id=deleted)[0].status_code == 200
        assert httpx.delete(f"{s.url}/sessions/{deleted}").status_code == 204
        expiring = httpx.post(s.url + "/sessions", json={}).json()["session_id"]
        time.sleep(2.5)
        for sid in (deleted, expiring):
            workers = set()
            for _ in range(40):
                r, w = post(s.url, prompt="", max_tokens=1, session_id=sid)
                assert r.status_code == 404, r.text
                workers.add(w)
                if workers == {"0", "1"}:
                    break
            assert workers == {"0", "1"}
        assert httpx.get(s.url + "/info").json()["sessions"]["sessions"] == 0
    finally:
        s.stop()


def test_metrics_sum_over_workers_and_info_shows_them(two):
    def total():
        text = httpx.get(two.url + "/metrics").text
        line = next((l for l in text.splitlines()
                     if l.startswith('rnnserve_requests_total{endpoint="/v1/models",status="200"}')), None)
        return float(line.split()[-1]) if line else 0.0
    before = total()
    workers = {httpx.get(two.url + "/v1/models").headers["x-rnnserve-worker"] for _ in range(30)}
    assert workers == {"0", "1"}
    assert [total() for _ in range(4)] == [before + 30] * 4  # the same sum whichever worker answers
    info = httpx.get(two.url + "/info").json()
    assert [w["id"] for w in info["workers"]] == [0, 1] and all(w["up"] for w in info["workers"])
    assert all(w["rss_mb"] > 20 for w in info["workers"])
    assert info["memory"]["rss_mb_total"] == pytest.approx(sum(w["rss_mb"] for w in info["workers"]), abs=0.2)
    assert info["store"]["backend"] == "sqlite"


def test_kill_9_of_the_whole_server_mid_turn_loses_only_that_turn(artifacts, tmp_path):
    state, port = tmp_path / "state", free_port()
    whole = None
    s = Server(artifacts, RNNSERVE_WORKERS=2, RNNSERVE_STATE_DIR=state, RNNSERVE_PORT=port)
    try:
        whole = post(s.url, prompt="rain fell", max_tokens=40)[0].json()["text"]
        sid = httpx.post(s.url + "/sessions", json={}).json()["session_id"]
        first = post(s.url, prompt="rain fell", max_tokens=20, session_id=sid)[0].json()["text"]
        with httpx.stream("POST", s.url + "/generate", json={"prompt": "", "max_tokens": 4096, "temperature": 0,
                                                             "session_id": sid}, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: {")  # the turn is under way
            s.kill()  # kill -9 of supervisor, workers and their helpers, mid-turn
    except Exception:
        s.kill()
        raise
    s = Server(artifacts, RNNSERVE_WORKERS=2, RNNSERVE_STATE_DIR=state, RNNSERVE_PORT=port)
    try:
        r, _ = post(s.url, prompt="", max_tokens=20, session_id=sid)  # the dead turn's claim was released at start
        assert r.status_code == 200, r.text
        assert first + r.json()["text"] == whole  # the killed turn left no trace; the committed state is intact
    finally:
        s.stop()


def test_health_needs_every_worker_and_a_dead_worker_is_replaced(two):
    info = httpx.get(two.url + "/info").json()
    victim = info["workers"][1]["pid"]
    os.kill(victim, signal.SIGKILL)
    saw_503 = False
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            r = httpx.get(two.url + "/health")
        except httpx.TransportError:  # a connection queued at the dying worker's socket is reset
            continue
        if r.status_code == 503:
            saw_503 = True
            assert "worker 1" in r.text
        elif saw_503:
            break
        time.sleep(0.05)
    assert saw_503 and r.status_code == 200
    pids = [w["pid"] for w in httpx.get(two.url + "/info").json()["workers"]]
    assert victim not in pids and len(pids) == 2
    assert "worker_died" in two.logs(tail=None)


def test_sigterm_drains_every_worker(artifacts, tmp_path):
    s = Server(artifacts, RNNSERVE_WORKERS=2, RNNSERVE_STATE_DIR=tmp_path, RNNSERVE_DRAIN_SECONDS=0.3)
    finals, started = [], threading.Semaphore(0)

    def reader(i):
        with httpx.stream("POST", s.url + "/generate", json={"max_tokens": 4096, "model": "wide", "seed": i},
                          timeout=30) as r:
            worker, lines = r.headers["x-rnnserve-worker"], []
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    if len(lines) == 1:
                        started.release()
            finals.append((worker, lines[-1], json.loads(lines[-2][6:])))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for _ in threads:
        assert started.acquire(timeout=20)
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert s.proc.wait(30) == 0
    assert len(finals) == 8 and {w for w, _, _ in finals} == {"0", "1"}
    assert all(last == "data: [DONE]" and final["finish_reason"] == "shutdown" for _, last, final in finals)
    s.stop()


def test_sigterm_to_the_whole_process_group_still_drains_in_order(artifacts, tmp_path):
    """`kill -TERM -PGID` (or systemd stopping the control group) reaches the classifier's process too: it
    keeps classifying while its worker drains, and the server still exits 0."""
    s = Server(artifacts, RNNSERVE_STATE_DIR=tmp_path, RNNSERVE_DRAIN_SECONDS=3)
    started, finals = threading.Event(), []

    def reader():
        with httpx.stream("POST", s.url + "/generate", json={"max_tokens": 4096, "model": "wide"}, timeout=30) as r:
            lines = []
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    started.set()
            finals.append(json.loads(lines[-2][6:]))

    t = threading.Thread(target=reader)
    t.start()
    assert started.wait(20)
    os.killpg(s.proc.pid, signal.SIGTERM)
    time.sleep(1.5)  # LitServe notices a dead classifier process within a second and would stop the server
    r = httpx.post(s.url + "/classify", json={"text": "hello there"}, timeout=10)
    assert r.status_code == 200, r.text
    t.join(30)
    assert s.proc.wait(30) == 0, s.logs()
    assert finals and finals[0]["finish_reason"] in ("shutdown", "length")
    assert "died" not in s.logs(tail=None)
    s.stop()


def test_memory_sessions_with_several_workers_is_refused(artifacts):
    p = subprocess.run([sys.executable, "-m", "rnnserve", "serve", "--workers", "2", "--sessions", "memory",
                        "--models", str(artifacts), "--port", str(free_port()), "--host", "127.0.0.1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 2 and "memory keeps sessions inside one process" in p.stderr


def test_an_unusable_store_is_a_clear_error_and_a_corrupt_one_is_set_aside(artifacts, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    p = subprocess.run([sys.executable, "-m", "rnnserve", "serve", "--models", str(artifacts), "--port",
                        str(free_port()), "--state-dir", str(blocker / "state")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 2 and "cannot create its folder" in p.stderr
    state = tmp_path / "state"
    state.mkdir()
    (state / "sessions.db").write_bytes(b"this is no database " * 100)
    s = Server(artifacts, RNNSERVE_STATE_DIR=state)
    try:
        sid = httpx.post(s.url + "/sessions", json={}).json()["session_id"]
        assert post(s.url, prompt="x", max_tokens=2, session_id=sid)[0].status_code == 200
        assert list(state.glob("sessions.db.corrupt-*")) and "session_store_corrupt" in s.logs(tail=None)
    finally:
        s.stop()


def test_a_port_in_use_is_a_clear_error(two):
    p = subprocess.run([sys.executable, "-m", "rnnserve", "serve", "--port", str(two.port), "--host", "127.0.0.1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 2 and f"cannot listen on 127.0.0.1:{two.port}" in p.stderr
