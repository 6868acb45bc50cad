"""The bundled language models served in int8 by default (RNNSERVE_INT8=auto), and still exact: a seed gives the
same text alone and among 40 other streams, a session's turns continue as one long call does, and /info says
which model is served and why."""
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import ROOT, Server
from tests.e2e.test_service import gen


def test_info_names_the_variant_served_and_why(bundled):
    models = httpx.get(bundled.url + "/info").json()["models"]
    for name in ("fortunes", "fortunes-bpe"):
        m = models[name]
        assert (m["variant"], m["onnx"]) == ("int8", "model.int8.onnx")
        assert m["variant_reason"].startswith("auto: exact across batches, +0.00")
        assert m["int8"]["batch_exact"] and m["int8"]["quality"]["delta"] <= 0.01
    assert models["langid"]["variant"] == "float32"
    assert models["langid"]["variant_reason"] == "auto: int8 not exact across batches (rows share a quantisation scale)"


def test_int8_seeded_text_is_the_same_alone_and_among_forty_streams(bundled):
    for model in ("fortunes", "fortunes-bpe"):
        body = {"model": model, "prompt": "Q: Why", "max_tokens": 80, "temperature": 1.0, "seed": 7}
        alone = gen(bundled.url, **body)["text"]
        with ThreadPoolExecutor(41) as pool:
            others = [pool.submit(gen, bundled.url, model=model, prompt=f"{i} cats", max_tokens=120,
                                  temperature=1.0, seed=i) for i in range(40)]
            again = pool.submit(gen, bundled.url, **body)
            assert again.result()["text"] == alone
            assert all(f.result()["finish_reason"] == "length" for f in others)


def test_int8_session_turns_continue_as_one_long_call(bundled):
    whole = gen(bundled.url, model="fortunes", prompt="The moon", max_tokens=60, temperature=0)["text"]
    sid = httpx.post(bundled.url + "/sessions", json={"model": "fortunes"}).json()["session_id"]
    parts = [gen(bundled.url, model="fortunes", prompt="The moon" if i == 0 else "", max_tokens=n, temperature=0,
                 session_id=sid)["text"] for i, n in enumerate((17, 1, 42))]
    assert "".join(parts) == whole


def test_int8_off_serves_float32_and_a_session_is_bound_to_its_variant(tmp_path):
    """A session begun on the int8 model is not continued by a server of the float32 one (same store): 409."""
    s = Server(ROOT / "models", RNNSERVE_STATE_DIR=tmp_path)
    try:
        sid = httpx.post(s.url + "/sessions", json={"model": "fortunes"}).json()["session_id"]
        gen(s.url, model="fortunes", prompt="The moon", max_tokens=5, session_id=sid)
    finally:
        s.stop()
    s = Server(ROOT / "models", RNNSERVE_INT8="0", RNNSERVE_STATE_DIR=tmp_path)
    try:
        m = httpx.get(s.url + "/info").json()["models"]["fortunes"]
        assert (m["variant"], m["onnx"], m["variant_reason"]) == ("float32", "model.onnx", "RNNSERVE_INT8=0")
        r = httpx.post(s.url + "/generate", json={"model": "fortunes", "prompt": "", "max_tokens": 5,
                                                  "session_id": sid, "stream": False})
        assert r.status_code == 409 and r.json()["error"]["type"] == "session_model_changed", r.text
    finally:
        s.stop()
