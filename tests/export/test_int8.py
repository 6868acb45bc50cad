"""int8 language models quantised per row (export/int8.py): exact across batches and chunks, close to float32,
their cost recorded; graphs of another shape fall back to ONNX Runtime's dynamic quantisation, marked so."""
import json

import numpy as np
import onnx
import pytest
from onnx import helper as oh

from export.int8 import Int8Error, quantize_lm, write_row_int8
from export.onnx_export import export
from service.artifact import AUTO_INT8_MAX_DELTA, choose_int8, load_artifact
from tests.export.test_export import make_run


def _states(art, rows, rng):
    """A state each row could have: the float model's state after a random prefix."""
    return art.run(rng.integers(0, art.manifest["vocab_size"], (rows, 7)).astype(np.int64))[1]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_per_row_int8_is_exact_across_batches_and_chunks(tmp_path, cell, layers):
    run, _, _ = make_run(tmp_path, "lm", cell, layers)
    m = export(run, tmp_path / "art", quantize="int8")
    q = m["int8"]
    assert (q["method"], q["batch_exact"], q["quality"]["metric"]) == ("per-row", True, "bits_per_char")
    assert q["quality"]["characters"] > 1000 and abs(q["quality"]["delta"]) < 0.05
    f, i8 = load_artifact(tmp_path / "art"), load_artifact(tmp_path / "art", int8=True)
    assert i8.onnx_file == "model.int8.onnx"
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, m["vocab_size"], (5, 30)).astype(np.int64)
    state = _states(f, 5, rng)
    logits, out = i8.run(tokens, state)
    for r in range(5):  # a row alone computes exactly what it computes in a batch of 5
        alone, out_r = i8.run(tokens[r:r + 1], [s[:, r:r + 1] for s in state])
        assert np.array_equal(alone[0], logits[r]) and all(np.array_equal(a[:, 0], b[:, r]) for a, b in zip(out_r, out))
    first, mid = i8.run(tokens[:, :11], state)  # a prompt cut in two reads as it does whole
    rest, end = i8.run(tokens[:, 11:], mid)
    assert np.array_equal(np.concatenate([first, rest], 1), logits)
    assert all(np.array_equal(a, b) for a, b in zip(end, out))
    import onnxruntime as ort  # ONNX Runtime's fusions change only roundings (one of them once dropped a bias)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(tmp_path / "art" / "model.int8.onnx"), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in plain.get_inputs()]
    got = plain.run(None, dict(zip(names, [tokens, *state])))
    assert np.abs(got[0] - logits).max() < 1e-5 and all(np.abs(a - b).max() < 1e-5 for a, b in zip(got[1:], out))
    ref, ref_out = f.run(tokens, state)  # and close to the float32 model
    assert np.abs(logits - ref).max() < 0.05 * np.abs(ref).max() + 0.02
    assert max(np.abs(a - b).max() for a, b in zip(out, ref_out)) < 0.05


def test_a_graph_of_another_shape_gets_dynamic_quantisation_not_served_by_default(tmp_path):
    run, _, tok = make_run(tmp_path, "lm", "lstm")
    export(run, tmp_path / "art")
    g = onnx.load(str(tmp_path / "art" / "model.onnx"))
    head = next(n for n in g.graph.node if n.op_type == "MatMul")
    g.graph.node.insert(list(g.graph.node).index(head), oh.make_node("Relu", [head.input[0]], ["relu_out"]))
    head.input[0] = "relu_out"
    onnx.save(g, str(tmp_path / "relu.onnx"))
    with pytest.raises(Int8Error, match=r"more than Embedding -> LSTM\|GRU -> Linear \(Relu\)"):
        write_row_int8(tmp_path / "relu.onnx", tmp_path / "q.onnx")
    how = quantize_lm(tmp_path / "relu.onnx", tmp_path / "q.onnx", tok, None)
    assert how["method"] == "onnxruntime-dynamic" and how["batch_exact"] is False and "Relu" in how["why_not_per_row"]
    assert how["quality"]["text"].startswith("sampled from the float32 model")
    use, why = choose_int8({"int8": how}, None)
    assert not use and "not exact across batches" in why
    assert choose_int8({"int8": how}, True) == (True, "RNNSERVE_INT8=1")


def test_auto_serves_int8_only_when_exact_and_cheap():
    cheap = {"int8": {"batch_exact": True, "quality": {"metric": "bits_per_char", "delta": 0.004}}}
    costly = {"int8": {"batch_exact": True,
                       "quality": {"metric": "bits_per_char", "delta": AUTO_INT8_MAX_DELTA + 0.001}}}
    assert choose_int8(cheap, None) == (True, "auto: exact across batches, +0.0040 bits/char")
    assert choose_int8(costly, None)[0] is False and "costs +0.0110 bits/char" in choose_int8(costly, None)[1]
    assert choose_int8({"int8": None}, None) == (False, "auto: no int8 model")
    assert choose_int8(cheap, False) == (False, "RNNSERVE_INT8=0")
    assert choose_int8({"int8": None}, True) == (False, "RNNSERVE_INT8=1 (no int8 model)")


def test_bundled_language_models_carry_exact_int8_and_its_cost():
    for name in ("fortunes", "fortunes-bpe"):
        q = json.loads(open(f"models/{name}/model.json").read())["int8"]
        assert q["method"] == "per-row" and q["batch_exact"]
        assert 0 <= q["quality"]["delta"] <= AUTO_INT8_MAX_DELTA and q["quality"]["characters"] >= 19_000
