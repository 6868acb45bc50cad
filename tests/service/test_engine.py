"""The engine without a server: plain Python, real ONNX Runtime sessions."""
import threading
import time

import numpy as np
import pytest

from service.artifact import load_artifact
from service.engine import Engine, Overloaded
from service.requests import Done, Failed, GenerationRequest, Text
from service.sampler import SamplingParams
from service.sessions import SessionState


class Collector:
    def __init__(self):
        self.events, self.done = {}, {}
        self.cv = threading.Condition()

    def __call__(self, events):
        with self.cv:
            for r, ev in events:
                self.events.setdefault(r.id, []).append(ev)
                if not isinstance(ev, Text):
                    assert r.id not in self.done, "a second final event"
                    self.done[r.id] = ev
            self.cv.notify_all()

    def wait(self, req, timeout=30):
        with self.cv:
            assert self.cv.wait_for(lambda: req.id in self.done, timeout)
        return self.done[req.id]

    def text(self, req):
        return "".join(e.text for e in self.events[req.id] if isinstance(e, Text))


@pytest.fixture
def lm(artifacts):
    return load_artifact(artifacts / "tinylm", threads=1)


@pytest.fixture
def engine(lm):
    out = Collector()
    e = Engine(lm, out, max_batch=8, max_queue=4).start()
    e.out = out
    yield e
    e.shutdown()


def run(engine, prompt, n, temperature=0.0, seed=None, stop=(), start=None, keep=False, top_k=0, top_p=1.0):
    req = GenerationRequest(engine.art.tokenizer.encode(prompt), n, SamplingParams(temperature, top_k, top_p, seed),
                            list(stop), start=start, keep_state=keep)
    engine.submit(req)
    return req


def reference_greedy(art, prompt, n):
    """Greedy decoding one row at a time, straight on the model."""
    logits, state = art.run(np.array([art.tokenizer.encode("\n" + prompt)]))
    text = []
    for _ in range(n):
        tok = int(logits[0, -1].argmax())
        text.append(art.tokenizer.piece(tok))
        logits, state = art.run(np.array([[tok]]), state)
    return "".join(text)


def test_batched_decoding_equals_one_row_at_a_time(engine, lm):
    prompts = ["the cat", "a dog ran to the park", "", "stars", "x" * 300]  # the last is prefilled in chunks
    engine.prefill_chunk = 64
    reqs = [run(engine, p, 25) for p in prompts]
    for p, r in zip(prompts, reqs):
        final = engine.out.wait(r)
        assert isinstance(final, Done) and final.finish_reason == "length" and final.completion_tokens == 25
        assert final.text == engine.out.text(r) == reference_greedy(lm, p, 25)
        assert final.state is None  # nobody asked to keep it


def test_stop_string_is_held_back_and_cut(engine, lm):
    full = reference_greedy(lm, "the", 60)
    stop = full[30:33]
    r = run(engine, "the", 60, stop=[stop])
    final = engine.out.wait(r)
    assert final.finish_reason == "stop" and final.text == full[: full.index(stop)]
    assert engine.out.text(r) == final.text


def test_kept_state_continues_exactly(engine, lm):
    whole = reference_greedy(lm, "rain fell", 30)
    a = engine.out.wait(run(engine, "rain fell", 10, keep=True))
    assert isinstance(a.state, SessionState) and a.state.arrays[0].shape == (1, 48) and len(a.state.arrays) == 2
    assert a.state.tokens_seen == len("\nrain fell") + 10 - 1  # everything but the pending token was fed
    b = engine.out.wait(run(engine, "", 20, start=a.state, keep=True))
    assert a.text + b.text == whole
    assert b.state.tokens_seen == a.state.tokens_seen + 20


def test_seeded_sampling_independent_of_batch(engine):
    alone = engine.out.wait(run(engine, "the", 40, temperature=1.0, seed=5)).text
    others = [run(engine, f"{i}", 60, temperature=1.0, seed=100 + i) for i in range(6)]
    again = run(engine, "the", 40, temperature=1.0, seed=5)
    assert engine.out.wait(again).text == alone
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
    r = run(e, "long", 4096, keep=True)
    deadline = time.time() + 5
    while not any(s.req is r for s in e.active) and time.time() < deadline:
        time.sleep(0.001)
    r.cancel()
    final = out.wait(r, 5)  # a cancelled request still ends with one final event: its session can settle
    assert final.finish_reason == "cancelled" and final.completion_tokens < 4096 and final.state is not None
    assert not e.active
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
    assert isinstance(ev, Failed) and "RuntimeError" in ev.message
    engine.fault_hook = None
    ok = engine.out.wait(run(engine, "the", 5))
    assert ok.finish_reason == "length" and engine.alive()


def test_shutdown_ends_streams_with_a_final_event(lm):
    out = Collector()
    e = Engine(lm, out, max_batch=4).start()
    r = run(e, "the", 4096, keep=True)
    deadline = time.time() + 5
    while not e.active and time.time() < deadline:
        time.sleep(0.001)
    queued = [run(e, "x", 4096) for _ in range(6)]  # 3 join the batch, 3 wait in the inbox
    e.shutdown("shutdown")
    final = out.wait(r, 5)
    assert final.finish_reason == "shutdown" and final.state is not None
    assert all(out.wait(q, 5).finish_reason == "shutdown" for q in queued)
    with pytest.raises(Overloaded):
        run(e, "x", 3)
