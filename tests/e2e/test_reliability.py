"""A service that survives overload, disconnects, faults, restarts and bad input (real server, 127.0.0.1)."""
import asyncio
import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import json_bytes
from tests.conftest import Server


def rss_mb(pid: int, tree: bool = True) -> float:
    """Resident memory of the server: the supervisor, its workers and their helper processes."""
    from service.board import rss_mb as tree_rss
    return tree_rss(pid)


def active(url):
    text = httpx.get(url + "/metrics").text
    return float(next(l.split()[1] for l in text.splitlines() if l.startswith("rnnserve_active_streams ")))


def test_overload_gets_503_fast_and_admitted_requests_complete(artifacts):
    s = Server(artifacts, RNNSERVE_MAX_BATCH=4, RNNSERVE_MAX_QUEUE=4)
    try:
        async def one(client, i):  # (status, when it was answered in full, Retry-After, final event)
            async with client.stream("POST", s.url + "/generate",
                                     json={"max_tokens": 300, "model": "wide", "seed": i}) as r:
                if r.status_code != 200:
                    await r.aread()
                    return r.status_code, time.perf_counter(), r.headers.get("retry-after"), None
                final = None
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and "finish_reason" in line:
                        final = json.loads(line[6:])
                return 200, time.perf_counter(), None, final

        async def health_probe(client, stop):
            codes = []
            while not stop.is_set():
                codes.append((await client.get(s.url + "/health")).status_code)
                await asyncio.sleep(0.05)
            return codes

        async def main():
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                stop = asyncio.Event()
                probe = asyncio.create_task(health_probe(client, stop))
                results = await asyncio.gather(*(one(client, i) for i in range(80)))  # 10x the 8 allowed
                stop.set()
                return results, await probe

        results, health = asyncio.run(main())
        ok = [r for r in results if r[0] == 200]
        rejected = [r for r in results if r[0] == 503]
        assert len(ok) + len(rejected) == 80 and len(ok) >= 8 and len(rejected) >= 40
        assert all(r[2] == "1" for r in rejected)
        # refused at once, not queued: every 503 was answered before the first admitted stream ended (a
        # queued request could only be answered after one). How fast is measured in docs/reliability.md.
        assert max(r[1] for r in rejected) < min(r[1] for r in ok)
        assert all(r[3]["finish_reason"] == "length" and r[3]["usage"]["completion_tokens"] == 300 for r in ok)
        assert health and all(c == 200 for c in health)
    finally:
        s.stop()


def test_disconnect_storm_returns_to_baseline(artifacts):
    s = Server(artifacts)
    try:
        httpx.post(s.url + "/generate", json={"max_tokens": 50, "stream": False, "model": "wide"})
        base = rss_mb(s.proc.pid)

        async def drop(client, i):
            async with client.stream("POST", s.url + "/generate", json={"max_tokens": 4096, "model": "wide",
                                                                         "seed": i}) as r:
                n = 0
                async for line in r.aiter_lines():
                    n += bool(line)
                    if n >= 2:
                        return True  # leave mid-stream: the connection closes here

        async def main():
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=250)) as client:
                return await asyncio.gather(*(drop(client, i) for i in range(200)))

        assert all(asyncio.run(main()))
        deadline = time.time() + 10
        while time.time() < deadline and active(s.url) != 0:
            time.sleep(0.1)
        assert active(s.url) == 0
        after = rss_mb(s.proc.pid)
        assert after < base * 1.25 + 20, (base, after)
        r = httpx.post(s.url + "/generate", json={"max_tokens": 20, "stream": False}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 20
    finally:
        s.stop()


def test_injected_step_fault_ends_requests_cleanly_and_service_goes_on(artifacts):
    s = Server(artifacts, RNNSERVE_INJECT_FAULT_AT_STEP=5)
    try:
        lines = []
        with httpx.stream("POST", s.url + "/generate", json={"max_tokens": 100}, timeout=30) as r:
            assert r.status_code == 200
            lines = [l for l in r.iter_lines() if l]
        assert lines[-1] == "data: [DONE]"
        err = json.loads(lines[-2][6:])
        assert err["error"]["type"] == "inference_error"
        ok = httpx.post(s.url + "/generate", json={"max_tokens": 10, "stream": False})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 10
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        s.stop()


def test_injected_fault_non_streaming_is_503_json(artifacts):
    s = Server(artifacts, RNNSERVE_INJECT_FAULT_AT_STEP=3)
    try:
        r = httpx.post(s.url + "/generate", json={"max_tokens": 50, "stream": False})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "inference_error"
    finally:
        s.stop()


def test_kill_9_and_restart_keeps_conversations(artifacts, tmp_path):
    """Every finished turn is committed to the SQLite store: kill -9 of the whole server loses nothing."""
    state = tmp_path / "state"
    s = Server(artifacts, RNNSERVE_STATE_DIR=state)
    try:
        whole = httpx.post(s.url + "/generate", json={"prompt": "the cat sat", "max_tokens": 30, "temperature": 0,
                                                       "stream": False}).json()["text"]
        sid = httpx.post(s.url + "/sessions", json={}).json()["session_id"]
        first = httpx.post(s.url + "/generate", json={"prompt": "the cat sat", "max_tokens": 10, "temperature": 0,
                                                       "stream": False, "session_id": sid}).json()["text"]
    finally:
        s.kill()
    assert (state / "sessions.db").exists()
    s = Server(artifacts, RNNSERVE_STATE_DIR=state)
    try:
        second = httpx.post(s.url + "/generate", json={"prompt": "", "max_tokens": 20, "temperature": 0,
                                                        "stream": False, "session_id": sid})
        assert second.status_code == 200, second.text
        assert first + second.json()["text"] == whole
    finally:
        s.stop()


def test_an_old_session_dump_is_imported_once(artifacts, tmp_path):
    """RNNSERVE_SESSIONS_FILE of earlier versions: read into the store at start, then retired."""
    import numpy as np
    from service.artifact import load_artifact
    from service.sessions import SessionState, dumpfile
    art = load_artifact(artifacts / "tinylm")
    logits, st = art.run(np.array([art.tokenizer.encode("\nthe cat sat")]))
    good = SessionState([a[:, 0, :] for a in st], int(logits[0, -1].argmax()), 12)
    bad_token = SessionState(good.arrays, 10**6, 0)  # outside the vocabulary: must never reach a batch
    path = tmp_path / "sessions.npz"
    dumpfile.save([("good", "tinylm", good, 5.0), ("bad", "tinylm", bad_token, 5.0), ("gone", "nosuch", good, 5.0)],
                  path)
    s = Server(artifacts, RNNSERVE_SESSIONS_FILE=path)
    try:
        whole = httpx.post(s.url + "/generate", json={"prompt": "the cat sat", "max_tokens": 21, "temperature": 0,
                                                       "stream": False}).json()["text"]
        r = httpx.post(s.url + "/generate", json={"prompt": "", "max_tokens": 20, "temperature": 0, "stream": False,
                                                   "session_id": "good"})
        assert r.status_code == 200 and whole[0] + r.json()["text"] == whole
        for sid in ("bad", "gone"):
            assert httpx.post(s.url + "/generate", json={"session_id": sid, "stream": False}).status_code == 404
        assert not path.exists() and list(tmp_path.glob("sessions.npz.imported-*"))
        assert '"left_out": 2' in s.logs(tail=None)
    finally:
        s.stop()


def test_corrupt_session_file_is_set_aside(artifacts, tmp_path):
    path = tmp_path / "sessions.npz"
    path.write_bytes(b"this is not a session file")
    s = Server(artifacts, RNNSERVE_SESSIONS_FILE=path)
    try:
        assert httpx.get(s.url + "/health").status_code == 200
        assert not path.exists() and list(tmp_path.glob("sessions.npz.bad-*"))
        assert "sessions_file_rejected" in s.logs(tail=None)
    finally:
        s.stop()


# ---------------------------------------------------------------------------------- fuzzing

# any code point, lone surrogates included (JSON can carry "\ud800"; hypothesis leaves them out by default)
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=50)
extreme = st.sampled_from([1e-300, 5e-324, 1e-45, 1.7e308, -1.7e308, -0.0, 2**63 - 1, 2**63, 2**64, -2**63, 10**30])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) |
    extreme | any_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(any_text, children, max_size=5),
    max_leaves=20)
FIELDS = {"/generate": ["prompt", "model", "max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "stream",
                        "session_id"],
          "/classify": ["text", "texts", "model"],
          "/v1/completions": ["prompt", "model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "n",
                              "echo", "logprobs", "stream_options"],
          "/v1/chat/completions": ["messages", "model", "max_tokens", "max_completion_tokens", "temperature", "n",
                                   "seed", "stop", "stream", "logprobs", "top_logprobs", "stream_options"]}


def bodies(endpoint):
    keys = st.sampled_from(FIELDS[endpoint]) | st.text(max_size=8)
    small_ints = st.integers(0, 40)
    messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]),
                                               "content": any_text}), max_size=3)
    value = json_values | small_ints | messages
    return st.dictionaries(keys, value, max_size=6) | json_values


@pytest.fixture(scope="module")
def fuzz_server(artifacts):
    s = Server(artifacts)
    yield s
    s.stop()


@pytest.mark.parametrize("endpoint", list(FIELDS))
def test_fuzzed_bodies_never_5xx(fuzz_server, endpoint):
    client = httpx.Client(base_url=fuzz_server.url, timeout=30)
    seen = {"n": 0}

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(bodies(endpoint))
    def check(body):
        if isinstance(body, dict) and isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 64:
            body["max_tokens"] = 64  # keep the run short; range checks are covered above
        # json.dumps escapes lone surrogates as \udXXX (httpx's json= would fail to encode them)
        r = client.post(endpoint, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        seen["n"] += 1
        assert r.status_code < 500, (body, r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert "error" in r.json()

    check()
    assert seen["n"] >= 400
    assert httpx.get(fuzz_server.url + "/health").status_code == 200


@pytest.mark.parametrize("size,chunked,status", [(1 << 20, False, 422), ((1 << 20) + 1, False, 413),
                                                  ((1 << 20) + 1, True, 413), (3 << 20, True, 413)])
def test_huge_bodies_are_refused_by_size(fuzz_server, size, chunked, status):
    """At the limit a body is read (and found wrong: 422); one byte more is 413, with or without a length."""
    body = b'{"prompt": "' + b"x" * (size - 14) + b'"}'
    assert len(body) == size
    content = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    r = httpx.post(fuzz_server.url + "/generate", content=content, headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == status, r.text[:200]
    assert r.json()["error"]["field"] in ("body", "prompt")
    assert r.content == json_bytes(r.json())  # the middleware's 413 written as the route's 422: compact JSON
