"""Hostile and unlucky clients against the real server: each defect of issue 15, with the test that found it.

Raw sockets where a well-behaved client library would hide the behaviour (clients that never read, never
finish their headers or their body, or leave)."""
import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

from tests.conftest import Server
from tests.e2e.test_reliability import rss_mb


def metric(url, name, headers=None):
    for line in httpx.get(url + "/metrics", headers=headers).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def raw_request(port, body: bytes, path="/generate", extra=b"", rcvbuf=None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra +
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return s


def read_until_closed(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (ConnectionResetError, socket.timeout) as e:
        if isinstance(e, socket.timeout):
            raise AssertionError(f"the server kept the connection open for {timeout} s; got {data[:200]!r}")
        return data


@pytest.fixture(scope="module")
def strict(artifacts):
    """A server with short limits, so that each guard shows within a second or two."""
    s = Server(artifacts, RNNSERVE_HEADER_TIMEOUT=1, RNNSERVE_BODY_TIMEOUT=1, RNNSERVE_KEEPALIVE_TIMEOUT=1,
               RNNSERVE_SEND_TIMEOUT=1, RNNSERVE_STREAM_BUFFER_EVENTS=64, RNNSERVE_MAX_CONNECTIONS=40,
               RNNSERVE_SEND_BUFFER_KB=64,
               # /classify holds a batch up to 1.5 s for company: requests queue up, so the limits show
               RNNSERVE_CLASSIFY_MAX_QUEUE=600, RNNSERVE_CLASSIFY_MAX_BATCH=4096, RNNSERVE_CLASSIFY_WAIT_MS=1500)
    yield s
    s.stop()


# 1 ------------------------------------------------------------------------------------------ /classify load

def big_classify_body(n=256, chars=3500) -> bytes:
    return json.dumps({"texts": [("bcdfg aeiou " * 400)[i % 7: i % 7 + chars] for i in range(n)]}).encode()


def test_classify_work_is_bounded_and_answered_503(strict):
    async def main():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=50)) as c:
            return await asyncio.gather(*(c.post(strict.url + "/classify", content=big_classify_body(),
                                                 headers={"content-type": "application/json"}) for _ in range(12)))
    rs = asyncio.run(main())
    codes = sorted(r.status_code for r in rs)
    assert 200 in codes and 503 in codes, codes  # 600 texts queued at most: 2 of 256 at a time, the rest refused
    refused = [r for r in rs if r.status_code == 503]
    assert all(r.headers["retry-after"] == "1" and "classification queue full" in r.json()["error"]["message"]
               for r in refused)
    ok = next(r for r in rs if r.status_code == 200).json()["results"]
    assert len(ok) == 256 and all(x["truncated"] for x in ok)  # 3,500 characters: past the 1,600 the model reads


def test_classify_work_of_clients_that_left_is_dropped(strict):
    sent0 = metric(strict.url, "rnnserve_classify_batch_size_sum")
    body = big_classify_body(200)
    socks = [raw_request(strict.port, body, "/classify") for _ in range(16)]
    for s in socks:
        s.close()  # the clients give up at once
    time.sleep(3)
    sent = metric(strict.url, "rnnserve_classify_batch_size_sum") - sent0
    assert sent <= 4 * 200, sent  # at most the batches already at the worker; 16 x 200 texts before the fix
    r = httpx.post(strict.url + "/classify", json={"text": "aeiou"}, timeout=30)
    assert r.status_code == 200  # and the next one is served at once


def test_big_bodies_do_not_stall_the_streams(strict):
    """While 1 MB bodies are parsed and classified, a running stream keeps receiving: its longest pause is a
    fraction of the burst (parsing happens off the event loop)."""
    gaps, done = [], threading.Event()

    def streamer():
        with httpx.stream("POST", strict.url + "/generate", json={"max_tokens": 4096, "model": "wide"},
                          timeout=60) as r:
            last = time.perf_counter()
            for line in r.iter_lines():
                if line:
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now
                if done.is_set():
                    return
    t = threading.Thread(target=streamer)
    t.start()
    time.sleep(0.5)
    t0 = time.perf_counter()

    async def burst():
        async with httpx.AsyncClient(timeout=60) as c:
            await asyncio.gather(*(c.post(strict.url + "/classify", content=big_classify_body(256, 3900),
                                          headers={"content-type": "application/json"}) for _ in range(6)))
    asyncio.run(burst())
    burst_s = time.perf_counter() - t0
    done.set()
    t.join(30)
    assert len(gaps) > 10 and max(gaps[1:]) < burst_s / 2, (max(gaps[1:]), burst_s)


def test_memory_returns_near_its_baseline_after_a_classify_burst(artifacts):
    s = Server(artifacts)
    try:
        httpx.post(s.url + "/classify", json={"texts": ["aeiou"] * 8})
        time.sleep(1)
        base = rss_mb(s.proc.pid, tree=True)

        async def burst():
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as c:
                await asyncio.gather(*(c.post(s.url + "/classify", content=big_classify_body(256, 2900),
                                              headers={"content-type": "application/json"}) for _ in range(60)))
        asyncio.run(burst())
        deadline, after = time.time() + 15, None
        while time.time() < deadline:
            time.sleep(1)
            after = rss_mb(s.proc.pid, tree=True)
            if after < base + 60:
                break
        assert after < base + 60, (base, after)
    finally:
        s.stop()


# 2 --------------------------------------------------------------------------------------- delete mid-turn

def test_deleting_a_generating_session_leaks_no_bytes(strict):
    for _ in range(3):
        sid = httpx.post(strict.url + "/sessions", json={"model": "wide"}).json()["session_id"]
        with httpx.stream("POST", strict.url + "/generate", json={"max_tokens": 4096, "model": "wide",
                                                                  "session_id": sid}, timeout=30) as r:
            lines = r.iter_lines()
            next(lines)
            assert httpx.delete(f"{strict.url}/sessions/{sid}").status_code == 204
        deadline = time.time() + 10
        while metric(strict.url, "rnnserve_active_streams") and time.time() < deadline:
            time.sleep(0.05)
    info = httpx.get(strict.url + "/info").json()["sessions"]
    assert info["sessions"] == 0 and info["bytes"] == 0, info


# 3 ---------------------------------------------------------------------------------- slow and silent clients

def test_a_connection_that_sends_nothing_is_closed(strict):
    s = socket.create_connection(("127.0.0.1", strict.port))
    data = read_until_closed(s, 10)
    assert data.startswith(b"HTTP/1.1 408") and b"request_timeout" in data


def test_headers_trickling_in_are_cut_off(strict):
    s = socket.create_connection(("127.0.0.1", strict.port))
    s.settimeout(10)
    t0 = time.time()
    try:
        for ch in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            s.sendall(bytes([ch]))
            time.sleep(0.1)
            if time.time() - t0 > 8:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = read_until_closed(s, 10)
    assert data.startswith(b"HTTP/1.1 408")


def test_a_body_trickling_in_is_cut_off(strict):
    s = socket.create_connection(("127.0.0.1", strict.port))
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    data = read_until_closed(s, 10)
    assert data.startswith(b"HTTP/1.1 408") and b'"field":"body"' in data  # compact, as every JSON answer


def test_a_stream_nobody_reads_is_cancelled_and_closed(strict):
    cancelled0 = metric(strict.url, 'rnnserve_request_finished_total{reason="cancelled"}')
    s = raw_request(strict.port, json.dumps({"prompt": "x", "max_tokens": 4096, "model": "wide", "stream": True})
                    .encode(), "/v1/completions", rcvbuf=2048)
    deadline = time.time() + 20
    while metric(strict.url, 'rnnserve_request_finished_total{reason="cancelled"}') == cancelled0:
        assert time.time() < deadline, "the unread stream was never cancelled"
        time.sleep(0.1)
    assert metric(strict.url, "rnnserve_active_streams") == 0
    data = read_until_closed(s, 15)  # what was buffered, then the server closes the connection
    assert data.startswith(b"HTTP/1.1 200") and b'"finish_reason": "length"' not in data and len(data) < 1 << 20
    assert "client_too_slow" in strict.logs(tail=None)


def test_open_connections_are_limited(strict):
    held = [socket.create_connection(("127.0.0.1", strict.port)) for _ in range(40)]
    try:
        extra = socket.create_connection(("127.0.0.1", strict.port))
        data = read_until_closed(extra, 5)
        assert data.startswith(b"HTTP/1.1 503") and b"too many open connections" in data
    finally:
        for h in held:
            h.close()


def test_idle_keep_alive_connections_are_closed(strict):
    s = socket.create_connection(("127.0.0.1", strict.port))
    s.sendall(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
    data = read_until_closed(s, 10)  # the answer, then the close after the 1 s keep-alive timeout
    assert data.startswith(b"HTTP/1.1 200")


# 4 --------------------------------------------------------------------------------------- a whole answer left

def test_a_non_streaming_client_that_leaves_is_cancelled_without_a_500(strict):
    cancelled0 = metric(strict.url, 'rnnserve_request_finished_total{reason="cancelled"}')
    s = raw_request(strict.port, json.dumps({"max_tokens": 4096, "model": "wide", "stream": False}).encode())
    time.sleep(0.3)
    s.close()
    deadline = time.time() + 10
    while metric(strict.url, 'rnnserve_request_finished_total{reason="cancelled"}') == cancelled0:
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    text = httpx.get(strict.url + "/metrics").text
    assert 'status="500"' not in text and 'endpoint="/generate",status="499"' in text
    assert "Traceback" not in strict.logs(tail=None)


# 5, 6, 9, 11 ------------------------------------------------------------------------------------ bad values

@pytest.mark.parametrize("path,body,field", [
    ("/v1/completions", '{"prompt": "\\ud800", "echo": true, "max_tokens": 1}', "prompt"),
    ("/v1/completions", '{"prompt": ["ok\\udfff"], "max_tokens": 1}', "prompt"),
    ("/generate", '{"prompt": "a", "stop": ["\\ud83d"]}', "stop"),
    ("/generate", '{"prompt": "a", "session_id": "\\udc00"}', "session_id"),
    ("/classify", '{"texts": ["fine", "\\ud800 no"]}', "texts"),
    ("/classify", '{"text": "ok", "model": "\\udbff"}', "model"),
])
def test_lone_surrogates_are_422_naming_the_field(strict, path, body, field):
    r = httpx.post(strict.url + path, content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field and "surrogate" in r.json()["error"]["message"]
    ok = httpx.post(strict.url + "/generate", content=b'{"prompt": "\\ud83c\\udf89 ok", "max_tokens": 2, "stream": false}',
                    headers={"content-type": "application/json"})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 4  # an escaped pair is one character


def test_every_sampling_field_at_its_extremes(strict):
    greedy = httpx.post(strict.url + "/generate", json={"prompt": "the", "max_tokens": 20, "temperature": 0,
                                                        "stream": False}).json()["text"]
    for extreme in ({"temperature": 1e-40}, {"temperature": 1e-5}, {"top_p": 1e-300}, {"top_p": 1e-45},
                    {"top_k": 1}, {"top_k": 1, "temperature": 5}):
        r = httpx.post(strict.url + "/generate", json={"prompt": "the", "max_tokens": 20, "stream": False, **extreme})
        assert r.status_code == 200 and r.json()["text"] == greedy, extreme
    for fine in ({"temperature": 5, "top_k": 1_000_000}, {"seed": 2**63 - 1}, {"seed": 0}, {"max_tokens": 1},
                 {"top_p": 1.0, "temperature": 5.0}):
        r = httpx.post(strict.url + "/generate", json={"prompt": "x", "max_tokens": 20, "stream": False, **fine})
        out = r.json()
        assert r.status_code == 200 and out["usage"]["completion_tokens"] == fine.get("max_tokens", 20), fine
        assert len(out["text"]) == out["usage"]["completion_tokens"]  # every token is text, none is padding
    for bad in ({"temperature": 5.0001}, {"top_p": 0}, {"top_p": 1.0001}, {"top_k": 1_000_001}, {"seed": 2**63},
                {"max_tokens": 4097}, {"temperature": 1e400}):
        body = json.dumps({"prompt": "x", **bad}).replace("Infinity", "1e400")
        r = httpx.post(strict.url + "/generate", content=body, headers={"content-type": "application/json"})
        assert r.status_code in (400, 422), (bad, r.text)


def test_a_body_without_content_type_is_415(strict):
    r = httpx.post(strict.url + "/generate", content=b'{"prompt": "x"}')
    assert r.status_code == 415 and r.json()["error"]["field"] == "content-type"
    assert "no Content-Type" in r.json()["error"]["message"]


def test_the_api_key_is_compared_in_constant_time(monkeypatch):
    import hmac
    from service.config import Config
    from service.metrics import ServiceMetrics
    from service.middleware import EdgeMiddleware
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    mw = EdgeMiddleware(app, Config(api_key="sekrit"), ServiceMetrics())
    for key in (b"sekrit", b"sekrix"):
        asyncio.run(mw({"type": "http", "path": "/info", "method": "GET",
                        "headers": [(b"authorization", b"Bearer " + key)]}, receive, send))
    assert calls == [(b"sekrit", b"sekrit"), (b"sekrix", b"sekrit")]
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200, 401]


def test_classify_reports_truncation_and_the_limit(strict):
    info = httpx.get(strict.url + "/info").json()
    n = info["models"]["tinyclf"]["read_chars"]
    assert n == 4 * info["models"]["tinyclf"]["max_chars"]
    r = httpx.post(strict.url + "/classify", json={"texts": ["a" * n, "a" * (n + 1)]}).json()["results"]
    assert [x["truncated"] for x in r] == [False, True]


# 7 ------------------------------------------------------------------------------------------- engine death

def test_a_dead_engine_fails_fast_releases_its_session_and_is_replaced(artifacts):
    s = Server(artifacts, RNNSERVE_INJECT_ENGINE_DEATH_AT_STEP=30, RNNSERVE_ENGINE_THREADS=1)
    try:
        sid = httpx.post(s.url + "/sessions", json={"model": "wide"}).json()["session_id"]
        with httpx.stream("POST", s.url + "/generate", json={"max_tokens": 200, "model": "wide", "session_id": sid},
                          timeout=20) as r:
            lines = [l for l in r.iter_lines() if l]
        assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["error"]["type"] == "inference_error"
        t0 = time.time()
        r = httpx.post(s.url + "/generate", json={"max_tokens": 5, "model": "wide", "stream": False}, timeout=20)
        assert r.status_code == 503 and "engine" in r.json()["error"]["message"]
        r = httpx.post(s.url + "/generate", json={"max_tokens": 5, "model": "wide", "stream": False,
                                                  "session_id": sid}, timeout=20)
        assert r.status_code == 503  # not 409: the dead turn released the session
        assert httpx.get(s.url + "/health").status_code == 503
        assert s.wait_healthy(60 - (time.time() - t0))  # the supervisor replaces the unhealthy worker
        r = httpx.post(s.url + "/generate", json={"max_tokens": 5, "model": "tinylm", "stream": False,
                                                  "session_id": None}, timeout=20)
        assert r.status_code == 200 and "worker_unhealthy" in s.logs(tail=None)
    finally:
        s.stop()
