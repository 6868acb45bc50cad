"""The engine and the sampler without a server: plain Python, real ONNX Runtime sessions."""
import threading
import time

import numpy as np
import pytest

from service.artifact import load_artifact, zero_state
from service.engine import Engine, Overloaded, Request
from service.sampler import SamplingParams, sample
from service.sessions import SessionBusy, SessionNotFound, SessionStore


class Collector:
    def __init__(self):
        self.events, self.done = {}, {}
        self.cv = threading.Condition()

    def __call__(self, events):
        with self.cv:
            for r, ev in events:
                self.events.setdefault(r.id, []).append(ev)
                if ev["type"] != "text":
                    self.done[r.id] = ev
            self.cv.notify_all()

    def wait(self, req, timeout=30):
        with self.cv:
            assert self.cv.wait_for(lambda: req.id in self.done, timeout)
        return self.done[req.id]

    def text(self, req):
        return "".join(e["text"] for e in self.events[req.id] if e["type"] == "text")


@pytest.fixture
def lm(artifacts):
    return load_artifact(artifacts / "tinylm", threads=1)


@pytest.fixture
def engine(lm):
    out = Collector()
    store = SessionStore()
    e = Engine(lm, out, store, max_batch=8, max_queue=4).start()
    e.out, e.store = out, store
    yield e
    e.shutdown()


def run(engine, prompt, n, temperature=0.0, seed=None, stop=(), session=None, top_k=0, top_p=1.0):
    req = Request(engine.art.tokenizer.encode(prompt), n, SamplingParams(temperature, top_k, top_p, seed),
                  list(stop), session)
    engine.submit(req)
    return req


def reference_greedy(art, prompt, n):
    """Greedy decoding one row at a time, straight on the ONNX session."""
    ids = art.tokenizer.encode("\n" + prompt)
    names = art.manifest["inputs"]
    out = art.session.run(None, {"tokens": np.array([ids]), **dict(zip(names[1:], zero_state(art, 1)))})
    text = []
    for _ in range(n):
        tok = int(out[0][0, -1].argmax())
        text.append(art.tokenizer.piece(tok))
        out = art.session.run(None, {"tokens": np.array([[tok]]), **dict(zip(names[1:], out[1:]))})
    return "".join(text)


def test_batched_decoding_equals_one_row_at_a_time(engine, lm):
    prompts = ["the cat", "a dog ran to the park", "", "stars", "x" * 300]  # the last is prefilled in chunks
    engine.prefill_chunk = 64
    reqs = [run(engine, p, 25) for p in prompts]
    for p, r in zip(prompts, reqs):
        final = engine.out.wait(r)
        assert final["finish_reason"] == "length" and final["usage"]["completion_tokens"] == 25
        assert final["text"] == engine.out.text(r) == reference_greedy(lm, p, 25)


def test_stop_string_is_held_back_and_cut(engine, lm):
    full = reference_greedy(lm, "the", 60)
    stop = full[30:33]
    r = run(engine, "the", 60, stop=[stop])
    final = engine.out.wait(r)
    assert final["finish_reason"] == "stop" and final["text"] == full[: full.index(stop)]
    assert engine.out.text(r) == final["text"]


def test_sessions_continue_exactly(engine, lm):
    s = engine.store.create(lm.name)
    whole = reference_greedy(lm, "rain fell", 30)
    engine.store.acquire(s.id, lm.name)
    a = run(engine, "rain fell", 10, session=s)
    engine.out.wait(a)
    engine.store.acquire(s.id, lm.name)
    b = run(engine, "", 20, session=s)
    assert engine.out.text(a) + engine.out.wait(b)["text"] == whole
    assert s.state[0].shape == (1, 48) and s.last_token is not None and not s.busy
    with pytest.raises(SessionNotFound):
        engine.store.acquire("nope", lm.name)
    engine.store.acquire(s.id, lm.name)
    with pytest.raises(SessionBusy):
        engine.store.acquire(s.id, lm.name)


def test_seeded_sampling_independent_of_batch(engine):
    alone = engine.out.wait(run(engine, "the", 40, temperature=1.0, seed=5))["text"]
    others = [run(engine, f"{i}", 60, temperature=1.0, seed=100 + i) for i in range(6)]
    again = run(engine, "the", 40, temperature=1.0, seed=5)
    assert engine.out.wait(again)["text"] == alone
    for o in others:
        engine.out.wait(o)


def test_queue_limit_and_cancel(lm):
    out = Collector()
    e = Engine(lm, out, max_batch=1, max_queue=1)  # not started: nothing drains the inbox
    e._running = True
    a, b = run(e, "a", 5), run(e, "b", 5)
    with pytest.raises(Overloaded):
        run(e, "c", 5)
    e._running = False
    e.start()
    out.wait(a), out.wait(b)
    r = run(e, "long", 4096)
    deadline = time.time() + 5
    while r not in e.active and time.time() < deadline:
        time.sleep(0.001)
    r.cancel()
    while e.active and time.time() < deadline:
        time.sleep(0.001)
    assert not e.active and r.generated < 4096 and r.id not in out.done
    e.shutdown()


def test_a_failing_step_ends_requests_with_an_error_and_the_engine_lives_on(engine):
    calls = {"n": 0}

    def fault():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected")

    engine.fault_hook = fault
    r = run(engine, "the", 50)
    ev = engine.out.wait(r)
    assert ev["type"] == "error" and ev["status"] == 503
    engine.fault_hook = None
    ok = engine.out.wait(run(engine, "the", 5))
    assert ok["finish_reason"] == "length" and engine.alive()


def test_shutdown_ends_streams_with_a_final_event(lm):
    out = Collector()
    e = Engine(lm, out, max_batch=4).start()
    r = run(e, "the", 4096)
    e.shutdown("shutdown")
    assert out.wait(r, 5)["finish_reason"] == "shutdown"
    with pytest.raises(Overloaded):
        run(e, "x", 3)


# ------------------------------------------------------------------ sampler


def test_sampler_greedy_top_k_1_and_tiny_top_p_agree():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)).astype(np.float32)
    greedy = logits.argmax(1)
    u = rng.random(6)
    ones = np.ones(6, np.float32)
    assert (sample(logits, np.zeros(6, np.float32), np.zeros(6, np.int64), ones, u) == greedy).all()
    assert (sample(logits, ones, np.ones(6, np.int64), ones, u) == greedy).all()
    assert (sample(logits, ones, np.zeros(6, np.int64), np.full(6, 1e-6, np.float32), u) == greedy).all()


def test_sampler_follows_the_distribution_and_respects_top_k():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    rng = np.random.default_rng(1)
    n = 20000
    draws = np.array([sample(logits, np.ones(1, np.float32), np.zeros(1, np.int64), np.ones(1, np.float32),
                             rng.random(1))[0] for _ in range(n)])
    freq = np.bincount(draws, minlength=4) / n
    assert np.abs(freq - [0.5, 0.3, 0.15, 0.05]).max() < 0.015
    top2 = np.array([sample(logits, np.ones(1, np.float32), np.full(1, 2), np.ones(1, np.float32),
                            rng.random(1))[0] for _ in range(4000)])
    assert set(top2) == {0, 1} and abs((top2 == 0).mean() - 0.5 / 0.8) < 0.03
    # top_p = 0.7 keeps tokens 0 and 1 (0.5 + 0.3 reaches 0.7)
    nucleus = np.array([sample(logits, np.ones(1, np.float32), np.zeros(1, np.int64), np.full(1, 0.7, np.float32),
                               rng.random(1))[0] for _ in range(4000)])
    assert set(nucleus) == {0, 1}


def test_sampler_mixed_rows_each_keep_their_parameters():
    logits = np.log(np.tile(np.array([[0.4, 0.3, 0.2, 0.1]], np.float32), (3, 1)))
    temp = np.array([0.0, 1.0, 1.0], np.float32)
    topk = np.array([0, 1, 0])
    topp = np.ones(3, np.float32)
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(500):
        out = sample(logits, temp, topk, topp, rng.random(3))
        assert out[0] == 0 and out[1] == 0
        seen.add(int(out[2]))
    assert seen == {0, 1, 2, 3}
