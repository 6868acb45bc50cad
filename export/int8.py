"""int8 language models whose rows do not see each other: `model.int8.onnx` with per-row quantisation.

ONNX Runtime's `quantize_dynamic` quantises a MatMul's or an LSTM's input with one scale for the whole
tensor, computed from that tensor: the whole batch. A row's logits then depend on which other rows share
its step (up to 0.16 on the bundled `fortunes` at batch 64), and on where a prompt was cut into chunks: the
same seed no longer gives the same text at 1 and at 64 streams, and a session's state is not the state of
one long call. The service's exactness does not survive that.

This module writes the same model with a scale per row instead: each row's activations (a hidden state, or
a lower layer's output) are quantised to int8 on their own, multiplied by int8 weights (a scale per output
column) with MatMulInteger, and scaled back. Nothing of one row reaches another, and a step computes the
same numbers whether its row came alone, in a batch of 64, or in the middle of a longer chunk: the graph
is exact in the sense the float graph is. The first layer's input projection is a table (embedding times
input weights plus both biases, per token, float16): a gather. The head is quantised the same way. The
recurrence runs in a Scan over time; the gate arithmetic is the cell's equations (LSTM, GRU with PyTorch's
linear_before_reset) in float32.

Activations use 8 bits around a zero point of 128 (uint8, as MLAS's fast u8s8 kernels want), weights 7
bits (±63): a uint8 times int8 pair then cannot overflow the 16-bit sums of AVX2 machines without VNNI
(ONNX Runtime's `reduce_range` for the same reason), so every x86 machine computes the same integers.

Built from the exported float32 graph (the one way in for a trained run and an imported state dict alike):
Gather(embedding) -> LSTM|GRU per layer -> MatMul (+ Add). Any other shape raises Int8Error with the reason,
and `quantize_lm` falls back to ONNX Runtime's dynamic quantisation, marked not batch-exact.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

ACT_LEVELS = 127   # activations: round(x / (max|row| / 127)) + 128, in 1..255
WEIGHT_LEVELS = 63  # weights: per column, round(w / (max|column| / 63)), in -63..63
OPSET = 17          # of the graph written, whatever the source graph's


# ops that only move, cut or join tensors (an export's layout and per-layer state): nothing else may sit
# between the embedding, the cells and the head of a graph rebuilt per row
PLUMBING = {"Constant", "Identity", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Shape", "Slice", "Concat",
            "Split", "Cast", "ConstantOfShape", "Expand"}


class Int8Error(Exception):
    pass


def _weights(path: Path) -> dict:
    """The float graph's weights in ONNX's own layout: embedding, per layer (cell, W, R, B), head (W^T, b)."""
    m = onnx.load(str(path))
    g = m.graph
    init = {i.name: nh.to_array(i) for i in g.initializer}
    consts = {n.output[0]: nh.to_array(n.attribute[0].t) for n in g.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    init.update(consts)
    for n in g.node:  # an exporter may alias a weight it found twice (equal biases) through Identity
        if n.op_type == "Identity" and n.input[0] in init:
            init[n.output[0]] = init[n.input[0]]
    other = sorted({n.op_type for n in g.node} - PLUMBING - {"LSTM", "GRU", "Gather", "MatMul", "Add"})
    if other:
        raise Int8Error(f"the graph computes more than Embedding -> LSTM|GRU -> Linear ({', '.join(other)})")
    cells = [n for n in g.node if n.op_type in ("LSTM", "GRU", "RNN", "Loop", "Scan")]
    if not cells or any(n.op_type not in ("LSTM", "GRU") for n in cells):
        raise Int8Error("per-row int8 needs LSTM or GRU nodes (found: "
                        f"{', '.join(sorted({n.op_type for n in cells})) or 'none'})")
    layers = []
    for n in cells:
        attrs = {a.name: oh.get_attribute_value(a) for a in n.attribute}
        if attrs.get("direction", b"forward") not in (b"forward", "forward"):
            raise Int8Error(f"{n.op_type} node {n.name!r} reads {attrs['direction']!r}: a language model reads forward")
        if n.op_type == "GRU" and not attrs.get("linear_before_reset", 0):
            raise Int8Error(f"GRU node {n.name!r}: linear_before_reset=0 (PyTorch's GRU has 1)")
        if any(k in attrs for k in ("activations", "clip")) or attrs.get("input_forget"):
            raise Int8Error(f"{n.op_type} node {n.name!r}: non-default activations, clip or input_forget")
        try:
            w, r = init[n.input[1]][0], init[n.input[2]][0]
            b = init[n.input[3]][0] if len(n.input) > 3 and n.input[3] else np.zeros(2 * w.shape[0], np.float32)
        except KeyError:
            raise Int8Error(f"{n.op_type} node {n.name!r}: weights are not constants of the graph") from None
        layers.append((n.op_type.lower(), w.astype(np.float32), r.astype(np.float32), b.astype(np.float32)))
    gathers = [n for n in g.node if n.op_type == "Gather" and n.input[0] in init and n.input[1] == g.input[0].name]
    heads = [n for n in g.node if n.op_type in ("MatMul", "Gemm") and any(i in init for i in n.input)]
    if len(gathers) != 1 or len(heads) != 1:
        raise Int8Error("per-row int8 needs one embedding Gather of the tokens and one MatMul head")
    head = heads[0]
    if head.op_type == "Gemm":
        raise Int8Error("a Gemm head: export the head as MatMul + Add")
    hw = init[head.input[1]]
    adds = [n for n in g.node if n.op_type == "Add" and head.output[0] in n.input]
    hb = next((init[i] for n in adds for i in n.input if i in init), np.zeros(hw.shape[1], np.float32))
    cell = {c for c, *_ in layers}
    hidden = {r.shape[1] for _, _, r, _ in layers}
    if len(cell) != 1 or len(hidden) != 1:
        raise Int8Error("per-row int8 needs one cell type and one hidden size across layers")
    return {"embed": init[gathers[0].input[0]].astype(np.float32), "layers": layers,
            "head_w": hw.astype(np.float32), "head_b": hb.astype(np.float32).reshape(-1),
            "cell": cell.pop(), "hidden": hidden.pop()}


def _gates(cell: str, a: np.ndarray, hidden: int) -> np.ndarray:
    """ONNX gate order (LSTM i,o,f,c; GRU z,r,h) to this graph's (LSTM i,f,o,c: the three sigmoids together;
    GRU z,r,h unchanged), along axis 0."""
    if cell == "lstm":
        i, o, f, c = np.split(a, 4, axis=0)
        return np.concatenate([i, f, o, c], 0)
    return a


def _qcols(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K x N float weights -> int8 (a scale per column, ±WEIGHT_LEVELS), scales [1, N]."""
    s = np.maximum(np.abs(w).max(0), 1e-30) / WEIGHT_LEVELS
    q = np.clip(np.round(w / s), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
    return q, s.astype(np.float32)[None, :]


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.k = [], [], 0

    def const(self, name: str, value) -> str:
        self.inits.append(nh.from_array(np.asarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], n_out: int = 1, nodes: list | None = None, **attrs):
        self.k += 1
        outs = [f"{op.lower()}_{self.k}_{j}" for j in range(n_out)]
        (self.nodes if nodes is None else nodes).append(oh.make_node(op, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def qmatmul(self, x: str, wq: str, ws: str, nodes: list | None = None) -> str:
        """x [rows, K] float -> x @ W [rows, N] float, x quantised per row (8 bits around 128).

        A bias goes after it as Sub of its negation, never Add: ONNX Runtime 1.32 fuses MatMulInteger, Cast,
        Mul and an Add of a constant into MatMulIntegerToFloat, which takes this per-row scale correctly but
        drops that bias (measured: a 2-layer LSTM's forget bias and the head's bias lost)."""
        o = lambda op, ins, **a: self.op(op, ins, nodes=nodes, **a)  # noqa: E731
        scale = o("Div", [o("Max", [o("ReduceMax", [o("Abs", [x])], axes=[1], keepdims=1), "eps"]), "levels"])
        r = o("Round", [o("Div", [x, scale])])
        q = o("Cast", [o("Add", [r, "offset"])], to=TP.UINT8)
        acc = o("Cast", [o("MatMulInteger", [q, wq, "zero_point"])], to=TP.FLOAT)
        return o("Mul", [acc, o("Mul", [scale, ws])])


def _step(gr: _Graph, cell: str, hidden: int, rq: str, rs: str, rbh: str | None) -> onnx.GraphProto:
    """The Scan body: state (h[, c]) and the step's input projection x -> new state and the output h."""
    nodes: list = []
    o = lambda op, ins, n=1, **a: gr.op(op, ins, n, nodes=nodes, **a)  # noqa: E731
    rec = gr.qmatmul("h", rq, rs, nodes)
    if cell == "lstm":
        s3, cand = o("Split", [o("Add", [rec, "x"]), "split_3_1"], 2, axis=1)
        i, f, og = o("Split", [o("Sigmoid", [s3])], 3, axis=1)
        c = o("Add", [o("Mul", [f, "c"]), o("Mul", [i, o("Tanh", [cand])])])
        nodes.append(oh.make_node("Identity", [c], ["c_out"]))
        h = o("Mul", [og, o("Tanh", ["c_out"])])
        states_in, states_out = ["h", "c"], ["h_out", "c_out"]
    else:
        xzr, xh = o("Split", ["x", "split_2_1"], 2, axis=1)
        rzr, rh = o("Split", [rec, "split_2_1"], 2, axis=1)
        z, r = o("Split", [o("Sigmoid", [o("Add", [xzr, rzr])])], 2, axis=1)
        cand = o("Tanh", [o("Add", [xh, o("Mul", [r, o("Add", [rh, rbh])])])])
        h = o("Add", [cand, o("Mul", [z, o("Sub", ["h", cand])])])
        states_in, states_out = ["h"], ["h_out"]
    nodes += [oh.make_node("Identity", [h], ["h_out"]), oh.make_node("Identity", ["h_out"], ["y"])]
    G = 4 if cell == "lstm" else 3
    vi = lambda n, d: oh.make_tensor_value_info(n, TP.FLOAT, ["B", d])  # noqa: E731
    return oh.make_graph(nodes, "step", [vi(s, hidden) for s in states_in] + [vi("x", G * hidden)],
                         [vi(s, hidden) for s in states_out] + [vi("y", hidden)])


def write_row_int8(src: Path, dst: Path) -> None:
    """`model.int8.onnx` for a language model: the float graph at `src` (our export's shape) rebuilt with
    per-row int8 (module docstring). Same inputs and outputs, same names."""
    w = _weights(src)
    cell, H = w["cell"], w["hidden"]
    G = 4 if cell == "lstm" else 3
    gr = _Graph()
    gr.const("eps", np.array([1e-30], np.float32))
    gr.const("levels", np.array([ACT_LEVELS], np.float32))
    gr.const("offset", np.array([128.0], np.float32))
    gr.const("zero_point", np.array(128, np.uint8))
    gr.const("split_3_1", np.array([3 * H, H], np.int64))
    gr.const("split_2_1", np.array([2 * H, H], np.int64))
    gr.const("rows_k", np.array([-1, H], np.int64))
    gr.const("axis0", np.array([0], np.int64))
    o = gr.op
    shape_bt = o("Shape", ["tokens"])  # [batch, time]
    x_in = None
    h_outs, c_outs = [], []
    for li, (_, W, R, B) in enumerate(w["layers"]):
        Wg, Rg = _gates(cell, W, H), _gates(cell, R, H)
        bw, br = _gates(cell, B[: G * H], H), _gates(cell, B[G * H:], H)
        # biases folded into the input projection; a GRU's recurrent bias of the new gate stays inside r * (.)
        bias = bw + br if cell == "lstm" else bw + np.concatenate([br[: 2 * H], np.zeros(H, np.float32)])
        if li == 0:
            # [vocab, G*H]: embedding times input weights plus both biases, per token, kept in float16 (half
            # the bytes; measured: no cost in bits/char) and widened after the gather
            table_w = (w["embed"] @ Wg.T + bias).astype(np.float16)
            xp = o("Cast", [o("Gather", [gr.const(f"l{li}_table", table_w), "tokens"])], to=TP.FLOAT)
        else:
            wq, ws = _qcols(Wg.T.copy())
            flat = o("Reshape", [x_in, gr.const(f"l{li}_rows", np.array([-1, Wg.shape[1]], np.int64))])
            proj = o("Sub", [gr.qmatmul(flat, gr.const(f"l{li}_wq", wq), gr.const(f"l{li}_ws", ws)),
                             gr.const(f"l{li}_minus_bias", -bias.astype(np.float32))])
            bt_g = o("Concat", [shape_bt, gr.const(f"l{li}_g", np.array([G * H], np.int64))], axis=0)
            xp = o("Reshape", [proj, bt_g])
        rq, rs = _qcols(Rg.T.copy())
        rbh = gr.const(f"l{li}_rbh", br[2 * H:].astype(np.float32)) if cell == "gru" else None
        body = _step(gr, cell, H, gr.const(f"l{li}_rq", rq), gr.const(f"l{li}_rs", rs), rbh)
        idx = gr.const(f"l{li}_idx", np.array(li, np.int64))
        states = [o("Gather", ["h0", idx], axis=0)] + ([o("Gather", ["c0", idx], axis=0)] if cell == "lstm" else [])
        outs = o("Scan", states + [xp], len(states) + 1, body=body, num_scan_inputs=1,
                 scan_input_axes=[1], scan_output_axes=[1])
        h_outs.append(o("Unsqueeze", [outs[0], "axis0"]))
        if cell == "lstm":
            c_outs.append(o("Unsqueeze", [outs[1], "axis0"]))
        x_in = outs[-1]  # [batch, time, H]
    V = w["head_w"].shape[1]
    flat = o("Reshape", [x_in, "rows_k"])
    hq, hs = _qcols(w["head_w"])
    head = gr.qmatmul(flat, gr.const("head_wq", hq), gr.const("head_ws", hs))
    logits = o("Sub", [head, gr.const("head_minus_b", -w["head_b"])])
    out_shape = o("Concat", [shape_bt, gr.const("vocab", np.array([V], np.int64))], axis=0)
    gr.nodes.append(oh.make_node("Reshape", [logits, out_shape], ["logits"]))
    L = len(w["layers"])
    join = lambda parts, name: (oh.make_node("Concat", parts, [name], axis=0) if L > 1  # noqa: E731
                                else oh.make_node("Identity", parts, [name]))
    gr.nodes.append(join(h_outs, "hn"))
    names_in = [("tokens", TP.INT64, ["batch", "time"]), ("h0", TP.FLOAT, [L, "batch", H])]
    names_out = [("logits", TP.FLOAT, ["batch", "time", V]), ("hn", TP.FLOAT, [L, "batch", H])]
    if cell == "lstm":
        gr.nodes.append(join(c_outs, "cn"))
        names_in.append(("c0", TP.FLOAT, [L, "batch", H]))
        names_out.append(("cn", TP.FLOAT, [L, "batch", H]))
    graph = oh.make_graph(gr.nodes, "rnnserve_int8_per_row",
                          [oh.make_tensor_value_info(*a) for a in names_in],
                          [oh.make_tensor_value_info(*a) for a in names_out], gr.inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)],
                          producer_name="rnnserve", doc_string="int8, quantised per row (export/int8.py)")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


QUALITY_CHARS = 20_000    # held-out characters the int8 model's cost is measured on
MIN_QUALITY_CHARS = 2_000  # fewer: measured on text the float32 model writes instead


class _Runner:
    """What service.evaluate.lm_bpc needs of an artifact: a graph's run and its zero state."""

    def __init__(self, path: Path):
        import onnxruntime as ort
        from service.artifact import session_options
        self.session = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.shape = self.session.get_inputs()[1].shape if len(self.inputs) > 1 else None

    def zero_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((self.shape[0], batch, self.shape[2]), np.float32) for _ in self.inputs[1:]]

    def run(self, tokens, state):
        out = self.session.run(None, {"tokens": np.asarray(tokens, np.int64), **dict(zip(self.inputs[1:], state))})
        return out[0], out[1:]


def sampled_text(float_path: Path, tok, rows: int = 8, length: int = 400, seed: int = 0) -> str:
    """Text the float32 model writes itself (temperature 1, seeded): what the int8 model is measured on when
    no held-out text came with the model (an import without --check-text)."""
    g = _Runner(float_path)
    rng = np.random.default_rng(seed)
    start = (tok.encode("\n") or [0])[-1]
    x = np.full((rows, 1), start, np.int64)
    state, out = g.zero_state(rows), []
    for _ in range(length):
        logits, state = g.run(x, state)
        z = logits[:, -1].astype(np.float64)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = np.array([[rng.choice(p.shape[1], p=r)] for r in p], np.int64)
        out.append(x[:, 0])
    ids = np.stack(out, 1)
    return "\n".join(tok.decode([int(i) for i in r]) for r in ids)


def lm_quality(float_path: Path, int8_path: Path, ids: list[int], chars: list[int] | None, source: str) -> dict:
    """Bits per character of both graphs on the same ids (read as service.evaluate reads a text): the int8
    model's quality cost, as the manifest records it."""
    from service.evaluate import lm_bpc
    f = lm_bpc(_Runner(float_path), ids, chars, streams=8)
    q = lm_bpc(_Runner(int8_path), ids, chars, streams=8)
    return {"metric": "bits_per_char", "float32": round(f["bpc"], 5), "int8": round(q["bpc"], 5),
            "delta": round(q["bpc"] - f["bpc"], 5), "characters": f["characters"], "text": source}


def quantize_dynamic(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic quantisation (a scale per tensor: rows see each other): for classifiers, and
    for language-model graphs of another shape."""
    import warnings
    from onnxruntime.quantization import QuantType, quantize_dynamic as ort_quantize
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ort_quantize(str(src), str(dst), weight_type=QuantType.QInt8)


def quantize_lm(src: Path, dst: Path, tok, held_out: str | None, source: str = "held-out text") -> dict:
    """`model.int8.onnx` for a language model and what the manifest says of it: per row where the graph has
    our export's shape, else ONNX
    Runtime's dynamic quantisation, marked not batch-exact; with its quality cost in bits per character."""
    text = (held_out or "")[:QUALITY_CHARS]
    if len(text) < MIN_QUALITY_CHARS:
        why = f"{source} has {len(text):,} characters" if text else "no held-out text came with it"
        text, source = sampled_text(src, tok), f"sampled from the float32 model ({why})"
    ids, chars = tok.encode_counted(text)
    try:
        write_row_int8(src, dst)
        return {"method": "per-row", "batch_exact": True, "quality": lm_quality(src, dst, ids, chars, source)}
    except Int8Error as e:
        quantize_dynamic(src, dst)
        return {"method": "onnxruntime-dynamic", "batch_exact": False, "why_not_per_row": str(e),
                "quality": lm_quality(src, dst, ids, chars, source)}


def quantize_classifier(src: Path, dst: Path, token_rows: list[list[int]], truth: list[int] | None,
                        pad_id: int) -> dict:
    """A classifier's `model.int8.onnx` (ONNX Runtime's dynamic quantisation: its scales are per batch, so it
    is not batch-exact and is served only when asked) and its cost: accuracy on the held-out sample in both
    (or, without labels, how often the two agree)."""
    quantize_dynamic(src, dst)
    preds = []
    for path in (src, dst):
        g = _Runner(path)
        got = []
        for r in token_rows:
            x = np.asarray([r or [pad_id]], np.int64)
            logits = g.session.run(None, {"tokens": x, "lengths": np.array([x.shape[1]], np.int64)})[0]
            got.append(int(logits[0].argmax()))
        preds.append(got)
    agree = sum(a == b for a, b in zip(*preds)) / max(1, len(token_rows))
    q = {"metric": "accuracy" if truth else "agreement", "texts": len(token_rows), "agreement": round(agree, 5)}
    if truth:
        acc = [sum(p == t for p, t in zip(ps, truth)) / len(truth) for ps in preds]
        q.update({"float32": round(acc[0], 5), "int8": round(acc[1], 5), "delta": round(acc[1] - acc[0], 5)})
    else:
        q["delta"] = round(agree - 1, 5)
    return {"method": "onnxruntime-dynamic", "batch_exact": False, "quality": q}


def requantize(folder: Path, text: Path | None = None) -> dict:
    """An existing artifact's model.int8.onnx rebuilt from its model.onnx (this module's way), its cost measured
    on `text` (a language model's text, a classifier's labelled CSV/TSV; else as quantize_lm falls back) and
    the manifest's `int8` rewritten: how the bundled models got theirs."""
    import json
    from service.artifact import load_artifact, sha256_file
    from service.labelled import read_labelled, read_text
    from .onnx_export import int8_model, write_manifest
    folder = Path(folder)
    art = load_artifact(folder)
    m = art.manifest
    src, dst = folder / m["onnx"], folder / "model.int8.onnx"
    held, source = None, f"{Path(text).name} (held out)" if text else ""
    if text and m["kind"] == "lm":
        held = read_text(text)[:QUALITY_CHARS]
    elif text:
        held = [[label, t] for label, t in read_labelled(text).rows[:512]]
    how = int8_model(m["kind"], src, dst, art.tokenizer, held, source, m.get("labels"), [])
    ids = art.tokenizer.encode((read_text(text) if text and m["kind"] == "lm" else "The quick brown fox.\n")[:400])
    f, q = _Runner(src), _Runner(dst)
    x = np.asarray([ids or [0]], np.int64)
    if m["kind"] == "lm":
        parity = float(np.abs(f.run(x, f.zero_state(1))[0] - q.run(x, q.zero_state(1))[0]).max())
    else:
        feed = {"tokens": x, "lengths": np.array([x.shape[1]], np.int64)}
        parity = float(np.abs(f.session.run(None, feed)[0] - q.session.run(None, feed)[0]).max())
    m["int8"] = {"onnx": dst.name, "onnx_sha256": sha256_file(dst), "onnx_bytes": dst.stat().st_size,
                 "parity": parity, **how}
    write_manifest(folder, m)
    return json.loads(json.dumps(m["int8"]))


if __name__ == "__main__":
    import argparse
    import json
    ap = argparse.ArgumentParser(description="rebuild an artifact's model.int8.onnx from its model.onnx")
    ap.add_argument("artifact")
    ap.add_argument("--text", help="held-out text (a language model) or labelled CSV/TSV (a classifier)")
    a = ap.parse_args()
    print(json.dumps(requantize(Path(a.artifact), Path(a.text) if a.text else None), indent=2))
