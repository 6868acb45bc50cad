"""End to end: the real LitServe server over a real socket, in a subprocess."""
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import Server, during_a_turn


def stream(url, body, timeout=60):
    """POST a streaming /generate; return (pieces, final, raw_lines)."""
    pieces, final, lines = [], None, []
    with httpx.stream("POST", url + "/generate", json=body, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                continue
            lines.append(line)
            assert line.startswith("data: ")
            data = line[6:]
            if data == "[DONE]":
                break
            ev = json.loads(data)
            if "finish_reason" in ev:
                final = ev
            else:
                assert ev["index"] == len(pieces)
                pieces.append(ev["text"])
    assert lines[-1] == "data: [DONE]"
    return pieces, final, lines


def gen(url, **body):
    r = httpx.post(url + "/generate", json={**body, "stream": False}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def metric(url, name):
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_streamed_generation(server):
    pieces, final, _ = stream(server.url, {"prompt": "The cat", "max_tokens": 40, "temperature": 0.7, "seed": 1})
    assert final["finish_reason"] == "length"
    assert "".join(pieces) == final["text"] and len(final["text"]) == 40
    assert final["usage"] == {"prompt_tokens": 7, "completion_tokens": 40}
    assert final["session_id"] is None


def test_non_streaming_and_greedy_is_deterministic(server):
    a = gen(server.url, prompt="the dog", max_tokens=30, temperature=0)
    b = gen(server.url, prompt="the dog", max_tokens=30, temperature=0)
    assert a == b and a["finish_reason"] == "length" and len(a["text"]) == 30
    empty = gen(server.url, prompt="", max_tokens=5)
    assert empty["usage"]["prompt_tokens"] == 0 and empty["usage"]["completion_tokens"] == 5


def test_seeded_requests_reproducible_under_concurrency(server):
    body = {"prompt": "rain fell", "max_tokens": 60, "temperature": 1.0, "top_p": 0.9, "top_k": 20, "seed": 42}
    alone = gen(server.url, **body)["text"]
    with ThreadPoolExecutor(17) as pool:
        others = [pool.submit(gen, server.url, prompt=f"{i} stars", max_tokens=80, temperature=1.0, seed=i)
                  for i in range(16)]
        again = pool.submit(gen, server.url, **body)
        assert again.result()["text"] == alone
        assert all(len(f.result()["text"]) == 80 for f in others)
    assert gen(server.url, **{**body, "seed": 43})["text"] != alone


def test_stop_strings(server):
    full = gen(server.url, prompt="The", max_tokens=60, temperature=0)["text"]
    stop = full[20:23]
    cut = full.index(stop)
    out = gen(server.url, prompt="The", max_tokens=60, temperature=0, stop=[stop, "never-there"])
    assert out["finish_reason"] == "stop" and out["text"] == full[:cut]
    pieces, final, _ = stream(server.url, {"prompt": "The", "max_tokens": 60, "temperature": 0, "stop": stop})
    assert "".join(pieces) == final["text"] == full[:cut]  # nothing of the stop string leaked into a piece


def test_sessions_continue_without_recomputing(server):
    whole = gen(server.url, prompt="the cat sat", max_tokens=30, temperature=0)["text"]
    r = httpx.post(server.url + "/sessions", json={})
    assert r.status_code == 201
    sid = r.json()["session_id"]
    assert r.json()["expires_in"] > 0
    first = gen(server.url, prompt="the cat sat", max_tokens=10, temperature=0, session_id=sid)
    second = gen(server.url, prompt="", max_tokens=20, temperature=0, session_id=sid)
    assert first["session_id"] == sid and second["session_id"] == sid
    assert first["text"] + second["text"] == whole
    info = httpx.get(server.url + "/info").json()
    assert info["sessions"]["bytes_per_session"]["tinylm"] == 2 * 48 * 4  # h and c, 1 layer, 48 units, float32
    assert httpx.delete(f"{server.url}/sessions/{sid}").status_code == 204
    r = httpx.post(server.url + "/generate", json={"prompt": "x", "session_id": sid, "stream": False})
    assert r.status_code == 404 and sid in r.json()["error"]["message"]
    assert httpx.delete(f"{server.url}/sessions/{sid}").status_code == 404


def test_concurrent_requests_on_one_session_conflict(server):
    sid = httpx.post(server.url + "/sessions", json={"model": "wide"}).json()["session_id"]
    loser, final = during_a_turn(server.url, sid, lambda: httpx.post(
        server.url + "/generate", json={"prompt": "b", "max_tokens": 5, "session_id": sid, "model": "wide",
                                        "stream": False}, timeout=30))
    assert loser.status_code == 409 and final["finish_reason"] == "length"
    assert loser.json()["error"]["field"] == "session_id" and "in use" in loser.json()["error"]["message"]
    # the session is intact and usable afterwards
    r = httpx.post(server.url + "/generate", json={"prompt": "", "max_tokens": 3, "session_id": sid, "stream": False,
                                                    "model": "wide"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_classify_single_and_batch(server):
    r = httpx.post(server.url + "/classify", json={"text": "aeiou aei"})
    assert r.status_code == 200, r.text
    one = r.json()
    assert one["label"] in ("hard", "soft") and abs(sum(one["scores"].values()) - 1) < 1e-4
    texts = ["bcdfg krst", "aeiou ae", "a", "kkkkrrrtttsss sss"]
    r = httpx.post(server.url + "/classify", json={"texts": texts, "model": "tinyclf"})
    results = r.json()["results"]
    assert len(results) == 4
    singles = [httpx.post(server.url + "/classify", json={"text": t}).json() for t in texts]
    for res, single in zip(results, singles):  # input order kept; batched = alone
        assert res["label"] == single["label"]
        for k in res["scores"]:
            assert abs(res["scores"][k] - single["scores"][k]) < 1e-5


def _classify_batches(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text
    get = lambda name: float(next(l.split()[-1] for l in text.splitlines() if l.startswith(name + " ")))
    return get("rnnserve_classify_batch_size_count"), get("rnnserve_classify_batch_size_sum")


def test_concurrent_classify_is_batched(server):
    texts = ["ae" * (i + 1) for i in range(64)]
    alone = {t: httpx.post(server.url + "/classify", json={"text": t}).json() for t in texts[:4]}
    n0, s0 = _classify_batches(server.url)
    with ThreadPoolExecutor(32) as pool:
        rs = list(pool.map(lambda t: httpx.post(server.url + "/classify", json={"text": t}, timeout=30), texts))
    assert all(r.status_code == 200 for r in rs)
    n1, s1 = _classify_batches(server.url)
    assert s1 - s0 == 64 and n1 - n0 < 64  # every text sent once, in fewer worker calls than requests
    for t, r in zip(texts, rs):  # each answer is its own request's, and batched equals alone
        if t in alone:
            assert r.json()["scores"] == pytest.approx(alone[t]["scores"], abs=1e-5)


def test_twenty_concurrent_streams(server):
    with ThreadPoolExecutor(20) as pool:
        outs = list(pool.map(lambda i: stream(server.url, {"prompt": f"{i}", "max_tokens": 100, "seed": i}),
                             range(20)))
    for pieces, final, _ in outs:
        assert final["finish_reason"] == "length" and "".join(pieces) == final["text"]


def test_disconnect_frees_slot(server):
    with httpx.stream("POST", server.url + "/generate", json={"prompt": "x", "max_tokens": 4096, "model": "wide"},
                      timeout=30) as r:
        lines = r.iter_lines()  # keep a reference: a dropped iterator closes the response
        for _ in range(3):
            next(lines)
        assert metric(server.url, "rnnserve_active_streams") >= 1
    deadline = time.time() + 5
    while time.time() < deadline and metric(server.url, "rnnserve_active_streams") != 0:
        time.sleep(0.05)
    assert metric(server.url, "rnnserve_active_streams") == 0
    assert metric(server.url, 'rnnserve_request_finished_total{reason="cancelled"}') >= 1


@pytest.mark.parametrize("body,status,field", [
    ({"prompt": 5}, 422, "prompt"),
    ({"prompt": "x" * 8193}, 422, "prompt"),
    ({"max_tokens": 0}, 422, "max_tokens"),
    ({"max_tokens": 10**9}, 422, "max_tokens"),
    ({"temperature": "NaN"}, 422, "temperature"),
    ({"temperature": -1}, 422, "temperature"),
    ({"temperature": 6}, 422, "temperature"),
    ({"top_p": 0}, 422, "top_p"),
    ({"top_k": -3}, 422, "top_k"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
    ({"stop": ["x"] * 10000}, 422, "stop"),
    ({"model": "nope"}, 404, "model"),
    ({"session_id": "no-such-session"}, 404, "session_id"),
    ({"promt": "typo"}, 422, "promt"),
])
def test_bad_generate_bodies(server, body, status, field):
    r = httpx.post(server.url + "/generate", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["message"]


@pytest.mark.parametrize("raw,ctype,status", [
    (b'{"prompt": ', "application/json", 400),
    (b'{"temperature": NaN}', "application/json", 400),
    (b'{"temperature": Infinity}', "application/json", 400),
    (b'\xff\xfe{"prompt": "x"}', "application/json", 400),
    (b'[1, 2]', "application/json", 422),
    (b'[' * 100000 + b']' * 100000, "application/json", 400),
    (b'prompt=hi', "application/x-www-form-urlencoded", 415),
    (b'{"prompt": "' + b"x" * (2 << 20) + b'"}', "application/json", 413),
])
def test_malformed_bodies(server, raw, ctype, status):
    r = httpx.post(server.url + "/generate", content=raw, headers={"content-type": ctype}, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_prompts_with_odd_characters(server):
    for prompt in ["\x00\x01\x1b[31m", "emoji 🎉🙂 mixed", "Ωπρ中文かな", "\ud7ff"]:
        out = gen(server.url, prompt=prompt, max_tokens=5)
        assert out["usage"]["prompt_tokens"] == len(prompt) and out["usage"]["completion_tokens"] == 5


def test_bad_classify_bodies(server):
    cases = [({"texts": []}, 422, "texts"), ({"texts": ["ok"] * 257}, 422, "texts"), ({"text": ""}, 422, "text"),
             ({}, 422, "body"), ({"text": "a", "model": "nope"}, 422, "model"), ({"texts": ["a", ""]}, 422, "texts"),
             ({"text": "x" * 8193}, 422, "text")]
    for body, status, field in cases:
        r = httpx.post(server.url + "/classify", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["field"] == field, (body, r.text)
    r = httpx.post(server.url + "/classify", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_health_info_metrics(server):
    assert httpx.get(server.url + "/health").status_code == 200
    info = httpx.get(server.url + "/info").json()
    assert info["models"]["tinylm"]["kind"] == "lm" and info["models"]["tinyclf"]["labels"] == ["hard", "soft"]
    assert info["limits"]["max_tokens"] == 4096 and info["limits"]["max_prompt_chars"] == 8192
    text = httpx.get(server.url + "/metrics").text
    for name in ("rnnserve_time_to_first_token_seconds_bucket", "rnnserve_inter_token_latency_seconds_bucket",
                 "rnnserve_requests_total", "rnnserve_generation_tokens_total", "rnnserve_batch_size_bucket",
                 "rnnserve_step_duration_seconds_bucket", "rnnserve_active_streams", "rnnserve_queued_requests",
                 "rnnserve_sessions"):
        assert name in text, name
    assert metric(server.url, "rnnserve_generation_tokens_total") > 0


def test_openai_client_streams_completions(server):
    import openai
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data][:1] == ["tinylm"]
    chunks = list(client.completions.create(model="tinylm", prompt="The cat", max_tokens=25, temperature=0,
                                            stream=True))
    text = "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    whole = client.completions.create(model="tinylm", prompt="The cat", max_tokens=25, temperature=0)
    assert whole.choices[0].text == text and len(text) == 25
    assert whole.usage.completion_tokens == 25 and whole.usage.total_tokens == 32
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)


def test_api_key_and_overload(artifacts):
    s = Server(artifacts, RNNSERVE_API_KEY="sekrit", RNNSERVE_MAX_BATCH=2, RNNSERVE_MAX_QUEUE=1)
    try:
        assert httpx.get(s.url + "/health").status_code == 200  # open for probes
        assert httpx.get(s.url + "/info").status_code == 401
        r = httpx.post(s.url + "/generate", json={"prompt": "x", "stream": False})
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        ok = httpx.post(s.url + "/generate", json={"max_tokens": 3, "stream": False},
                        headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200
        assert httpx.get(s.url + "/info", headers={"X-API-Key": "sekrit"}).status_code == 200
        hdr = {"X-API-Key": "sekrit"}
        streams = [httpx.stream("POST", s.url + "/generate", json={"max_tokens": 4096, "model": "wide"}, headers=hdr,
                                timeout=30)
                   for _ in range(3)]
        opened = [st.__enter__() for st in streams]
        try:
            for o in opened:
                assert o.status_code == 200
            r = httpx.post(s.url + "/generate", json={"max_tokens": 5, "stream": False, "model": "wide"}, headers=hdr)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            # refused while the batch is still full, not queued until a slot freed
            assert httpx.get(s.url + "/info", headers=hdr).json()["engine"]["wide"]["active"] == 2
        finally:
            for st in streams:
                st.__exit__(None, None, None)
    finally:
        s.stop()


def test_sigterm_ends_streams_with_a_final_event(artifacts):
    import signal
    s = Server(artifacts, RNNSERVE_DRAIN_SECONDS=0.3)  # a 4096-token stream outlasts the drain: it is cut
    events, started = [], threading.Event()

    def reader():
        with httpx.stream("POST", s.url + "/generate", json={"max_tokens": 4096, "model": "wide"}, timeout=30) as r:
            for line in r.iter_lines():
                if line:
                    events.append(line)
                    started.set()

    t = threading.Thread(target=reader)
    t.start()
    assert started.wait(10)
    s.proc.send_signal(signal.SIGTERM)
    t.join(20)
    s.proc.wait(20)
    assert s.proc.returncode == 0
    assert events[-1] == "data: [DONE]"
    final = json.loads(events[-2][6:])
    assert final["finish_reason"] == "shutdown"
    s.stop()


def test_a_stream_interval_puts_the_tokens_made_meanwhile_in_one_event(artifacts, tmp_path):
    """RNNSERVE_STREAM_INTERVAL=1000: after the first token a stream writes at most once a second, so the
    200 tokens the tiny model makes in well under that come as the first piece and one more (the same text);
    the default sends one stream's text every quarter of a millisecond. Each on a server of its own: the
    default's interval grows with the streams a shared server is running."""
    body = {"prompt": "The cat", "max_tokens": 200, "temperature": 0, "model": "tinylm"}
    got = {}
    for interval in ("auto", "1000"):
        s = Server(artifacts, RNNSERVE_STREAM_INTERVAL=interval, RNNSERVE_STATE_DIR=tmp_path / interval)
        try:
            got[interval] = stream(s.url, body)
        finally:
            s.stop()
    (pieces, final, _), (slow, slow_final, _) = got["auto"], got["1000"]
    assert len(pieces) > 3 and "".join(pieces) == final["text"]  # (how many depends on the machine's speed)
    assert len(slow) <= 3 and "".join(slow) == slow_final["text"] == final["text"]
