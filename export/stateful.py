"""A stateless recurrent graph made stateful: graph surgery with the `onnx` library, graph in, graph out.

The graph people have is `torch.onnx.export(model, (x,), "model.onnx")` of a module called with
`hidden=None` (or tf2onnx's Keras LSTM, or an older export): its ONNX `LSTM`/`GRU`/`RNN` nodes start from
zeros and their final states are dropped or left as stray outputs, so it cannot continue a text. This
module rewrites such a graph into the artifact contract (docs/artifact.md), and knows nothing of artifacts:

- a language model: every recurrent node's `initial_h` (and `initial_c`) becomes a slice of the new graph
  inputs `h0` (`c0`), shaped (layers, batch, hidden) with one layer per node, as torch stacks them; the
  nodes' `Y_h` (`Y_c`) are concatenated into the outputs `hn` (`cn`); the token input becomes `tokens`,
  the logits output `logits`, and every other output is dropped;
- a classifier: a new input `lengths` reaches every recurrent node as its `sequence_lens`, so that a padded
  row reads as the same text alone (a bidirectional node's backward pass then starts at the row's last
  token); the logits output becomes `logits`;
- a node's `layout` (sequence-major 0, batch-major 1) is respected; what sits around the recurrent nodes
  (embeddings, LayerNorm, projections, heads) is kept as the graph computes it; the inputs' and outputs'
  batch and time axes are made dynamic (whether the graph's own nodes allow that is what the parity checks
  of the importer then find out: a shape baked into a node is named there).

A starting state must be zeros (an absent input, an initializer or constant of zeros, or zeros the graph
builds from the input's shape): it is computed on a sample input and checked. The rewrite is refused with
the reason when the recurrence is not a recurrent node (a `Loop`/`Scan`, or cells unrolled into MatMuls),
when a starting state is not zeros, when the nodes are not one chain (two independent recurrent paths),
or when the nodes cannot be packed into one (layers, batch, hidden) state.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RECURRENT = ("LSTM", "GRU", "RNN")
PARITY = 1e-5  # the rewritten graph from a zero state against the original, on whole sequences
EXPORTER_HINT = ("export it with torch.onnx.export (the legacy exporter, dynamo=False, and the dynamo exporter "
                 "both keep nn.LSTM/nn.GRU as one LSTM/GRU operator; torch.jit.script makes a Loop), or with tf2onnx, "
                 "which fuses a Keras LSTM into one")


class NotStateful(ValueError):
    """The graph cannot be made stateful here; the message is the reason and the way out."""


@dataclass
class Rewritten:
    model: object  # onnx.ModelProto
    cell: str  # lstm | gru | rnn
    layers: int
    hidden: int
    bidirectional: bool
    layout: int
    renamed: dict = field(default_factory=dict)  # original input/output name -> contract name
    dropped_outputs: list = field(default_factory=list)
    freed_reshapes: list = field(default_factory=list)  # Reshape nodes whose baked batch/time sizes now copy
    parity: float | None = None  # set by the importer: max |rewritten - original| on whole sequences

    def summary(self) -> dict:
        """What the rewrite did, for the manifest."""
        return {"cell": self.cell, "layers": self.layers, "hidden": self.hidden, "bidirectional": self.bidirectional,
                "layout": "batch-major" if self.layout == 1 else "sequence-major", "renamed": self.renamed,
                "dropped_outputs": self.dropped_outputs, "freed_reshapes": self.freed_reshapes, "parity": self.parity}


def recurrent_nodes(graph) -> list:
    return [n for n in graph.node if n.op_type in RECURRENT and n.domain in ("", "ai.onnx")]


def is_stateless(model) -> bool:
    """Recurrent nodes, and no graph input but the token ids: no state (nor, for a classifier, lengths) can
    be given to it. What `make_stateful` is for."""
    g = model.graph
    init = {i.name for i in g.initializer}
    return bool(recurrent_nodes(g)) and len([i for i in g.input if i.name not in init]) == 1


def _attr(node, name, default=None):
    import onnx
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _downstream(graph, names: set) -> set:
    """Every tensor computed (transitively) from `names`, the names included."""
    reached = set(names)
    for n in graph.node:  # a valid graph lists its nodes in topological order
        if any(i in reached for i in n.input if i):
            reached.update(o for o in n.output if o)
    return reached


def refuse_without_recurrent_nodes(graph) -> None:
    ops = {n.op_type for n in graph.node}
    if ops & {"Loop", "Scan"}:
        kind = "a Loop" if "Loop" in ops else "a Scan"
        raise NotStateful(f"the recurrence is {kind} operator, not an LSTM/GRU/RNN node, so its state cannot be told "
                          f"apart from the rest of the loop: {EXPORTER_HINT}")
    if "Tanh" in ops and ops & {"MatMul", "Gemm"}:
        raise NotStateful("the graph has no LSTM, GRU or RNN node: its recurrence is unrolled into matrix products, "
                          "Sigmoid and Tanh operators, one copy per time step (a Python loop over a cell, traced), so it "
                          f"reads texts of one length only and has no state to carry: write it with nn.LSTM/nn.GRU and "
                          f"{EXPORTER_HINT}")
    raise NotStateful("the graph has no LSTM, GRU or RNN node: nothing in it carries a state")


def make_stateful(model, kind: str, sample_tokens: np.ndarray | None = None) -> Rewritten:
    """The graph rewritten to the contract of `kind` (lm | classifier); NotStateful with the reason."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's graph stays as it was
    g = model.graph
    nodes = recurrent_nodes(g)
    if not nodes:
        refuse_without_recurrent_nodes(g)
    _one_chain(g, nodes)
    cells = {n.op_type for n in nodes}
    if len(cells) > 1:
        raise NotStateful(f"the recurrent nodes mix {', '.join(sorted(cells))}: one state layout cannot hold them")
    op = nodes[0].op_type
    cell = op.lower()
    hidden = {_attr(n, "hidden_size") for n in nodes}
    layout = {_attr(n, "layout", 0) for n in nodes}
    dirs = {_attr(n, "direction", "forward") for n in nodes}
    if len(hidden) != 1 or None in hidden:
        raise NotStateful(f"the recurrent nodes have hidden sizes {sorted(h for h in hidden if h)}: the state "
                          "(layers, batch, hidden) needs one")
    if len(layout) != 1:
        raise NotStateful("the recurrent nodes mix sequence-major and batch-major layouts")
    (hidden,), (layout,) = hidden, layout
    bidirectional = "bidirectional" in dirs
    if kind == "lm" and dirs != {"forward"}:
        raise NotStateful(f"a language model's recurrent nodes must read forward (these are {', '.join(sorted(dirs))}): "
                          "a model that reads the text backwards cannot continue it")
    init = {i.name for i in g.initializer}
    feeds = [i for i in g.input if i.name not in init]
    tokens = [i for i in feeds if i.type.tensor_type.elem_type in (TensorProto.INT64, TensorProto.INT32)]
    if len(feeds) != 1 or len(tokens) != 1:
        raise NotStateful(f"graph inputs {[i.name for i in feeds]}: a stateless graph made stateful takes one input, "
                          "the token ids (int64 or int32)")
    logits_rank = 3 if kind == "lm" else 2
    floats = [o for o in g.output if o.type.tensor_type.elem_type == TensorProto.FLOAT
              and len(o.type.tensor_type.shape.dim) == logits_rank]
    if not floats:
        raise NotStateful(f"no float output of rank {logits_rank} ({'batch, time, vocabulary' if kind == 'lm' else 'batch, classes'}): "
                          "the logits cannot be told")
    logits_out = floats[0]
    states = ["h", "c"] if op == "LSTM" else ["h"]
    if sample_tokens is None:
        sample_tokens = _sample(tokens[0])
    _zero_starts(model, nodes, states, sample_tokens, tokens[0])
    freed = _free_reshapes(model)

    renamed = {tokens[0].name: "tokens", logits_out.name: "logits"}
    new_nodes, dropped = [], [o.name for o in g.output if o.name != logits_out.name]
    tok_in = tokens[0]
    if tok_in.type.tensor_type.elem_type == TensorProto.INT32:
        new_nodes.append(helper.make_node("Cast", ["tokens"], ["rs_tokens_int32"], to=TensorProto.INT32))
        _replace_input(g, tok_in.name, "rs_tokens_int32")
    else:
        _replace_input(g, tok_in.name, "tokens")
    graph_inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])]
    graph_outputs = []
    # the logits: a graph output computed by a node, renamed where it is made
    _replace_output(g, logits_out.name, "logits")
    if kind == "lm":
        layers = len(nodes)
        slot = {"h": 5, "c": 6}
        for s in states:
            name = f"{s}0"
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [layers, "batch", hidden]))
            finals = []
            for i, n in enumerate(nodes):
                layer = f"rs_{s}0_layer{i}"
                new_nodes.append(helper.make_node("Slice", [name, f"rs_start{i}", f"rs_end{i}", "rs_axis0"], [layer]))
                if layout == 1:  # batch-major: [batch, directions, hidden]
                    new_nodes.append(helper.make_node("Transpose", [layer], [layer + "_bm"], perm=[1, 0, 2]))
                    layer += "_bm"
                while len(n.input) <= slot[s]:
                    n.input.append("")
                n.input[slot[s]] = layer
                out_slot = 1 if s == "h" else 2
                while len(n.output) <= out_slot:
                    n.output.append("")
                if not n.output[out_slot]:
                    n.output[out_slot] = f"rs_{s}n_layer{i}"
                final = n.output[out_slot]
                if layout == 1:
                    new_nodes.append(helper.make_node("Transpose", [final], [final + "_sm"], perm=[1, 0, 2]))
                    final += "_sm"
                finals.append(final)
            new_nodes.append(helper.make_node("Concat", finals, [f"{s}n"], axis=0))
            graph_outputs.append(helper.make_tensor_value_info(f"{s}n", TensorProto.FLOAT, [layers, "batch", hidden]))
        for i in range(len(nodes)):
            g.initializer.extend([onnx.numpy_helper.from_array(np.array([i], np.int64), f"rs_start{i}"),
                                  onnx.numpy_helper.from_array(np.array([i + 1], np.int64), f"rs_end{i}")])
        g.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "rs_axis0"))
        logits_shape = ["batch", "time", _last_dim(logits_out)]
    else:
        layers = len(nodes)
        graph_inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]))
        new_nodes.append(helper.make_node("Cast", ["lengths"], ["rs_lengths_int32"], to=TensorProto.INT32))
        for n in nodes:
            while len(n.input) <= 4:
                n.input.append("")
            n.input[4] = "rs_lengths_int32"
            for slot in (5, 6):  # zeros, as checked: an absent starting state is zeros at any batch size
                if len(n.input) > slot:
                    n.input[slot] = ""
        logits_shape = ["batch", _last_dim(logits_out)]
    nodes_all = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes_all)
    initializers = [i for i in g.input if i.name in init]
    del g.input[:]
    g.input.extend(graph_inputs + initializers)
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("logits", TensorProto.FLOAT, logits_shape)] + graph_outputs)
    del g.value_info[:]  # shapes inferred for the old fixed sizes would contradict the dynamic axes
    _topological(g)
    _prune(g)
    onnx.checker.check_model(model)
    return Rewritten(model, cell, layers, hidden, bidirectional, layout, renamed, dropped, freed)


def _last_dim(v):
    d = v.type.tensor_type.shape.dim[-1]
    return d.dim_value if d.HasField("dim_value") else (d.dim_param or "classes")


def _sample(token_input) -> np.ndarray:
    """Token ids shaped as the graph declares its input (fixed sizes kept, free ones 2 and 5), all 1s."""
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else n
            for d, n in zip(token_input.type.tensor_type.shape.dim, (2, 5, 1, 1))]
    from onnx import TensorProto
    dtype = np.int32 if token_input.type.tensor_type.elem_type == TensorProto.INT32 else np.int64
    return np.ones(dims, dtype=dtype)


def _one_chain(graph, nodes) -> None:
    """The recurrent nodes read one another in order: layer k+1 is computed from layer k."""
    for a, b in zip(nodes, nodes[1:]):
        if not any(i in _downstream(graph, set(o for o in a.output if o)) for i in b.input if i):
            raise NotStateful(f"more than one independent recurrent path: {b.op_type} node {b.name or b.output[0]!r} "
                              f"does not read {a.op_type} node {a.name or a.output[0]!r}, so one carried state cannot "
                              "serve both (an encoder and a decoder, or parallel branches)")


def _zero_starts(model, nodes, states, sample, token_input) -> None:
    """Every starting state the graph gives its recurrent nodes is zeros: computed on a sample input."""
    import onnx
    import onnxruntime as ort
    g = model.graph
    slots = {"h": 5, "c": 6}
    wanted = [(i, s, n.input[slots[s]]) for i, n in enumerate(nodes) for s in states
              if len(n.input) > slots[s] and n.input[slots[s]]]
    if not wanted:
        return
    init = {t.name: t for t in g.initializer}
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    outputs = []
    for _, _, name in wanted:
        if name not in init and name not in {o.name for o in probe.graph.output}:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        outputs.append(name)
    values = {}
    computed = [n for n in outputs if n not in init]
    if computed:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:
            sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
            values = dict(zip(computed, sess.run(computed, {token_input.name: sample})))
        except Exception as e:  # onnxruntime's own errors: the graph does not run as declared
            raise NotStateful(f"the graph did not run on a sample input {list(sample.shape)} to read its starting states "
                              f"({str(e).splitlines()[0][:200]})") from None
    for i, s, name in wanted:
        v = onnx.numpy_helper.to_array(init[name]) if name in init else values[name]
        if np.any(v != 0):
            raise NotStateful(f"layer {i}'s starting state {'h' if s == 'h' else 'c'} ({name!r}) is not zeros: the "
                              "graph computes it from its input, so a carried state cannot replace it")


def _free_reshapes(model) -> list[str]:
    """A graph exported at one batch and length bakes them into its Reshape nodes (`[2, 7, 48]`). Where an
    entry of such a shape equals the input's own size on that axis (shape inference at the export's sizes), it
    becomes 0, "copy the input's": the same at those sizes, and free at others. The Reshape nodes changed."""
    import onnx
    from onnx import numpy_helper
    g = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 — a graph shape inference cannot follow keeps its Reshapes as they are
        return []
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
    consts = {t.name: t for t in g.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant" and n.attribute
                   and n.attribute[0].name == "value"})
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    freed = []
    for n in g.node:
        if n.op_type != "Reshape" or _attr(n, "allowzero", 0) or n.input[1] not in consts:
            continue
        target = numpy_helper.to_array(consts[n.input[1]]).astype(np.int64)
        source = shapes.get(n.input[0]) or []
        new = target.copy()
        for i, v in enumerate(target):
            if i < len(source) and source[i] == v and v > 0:
                new[i] = 0
        if (new != target).any():
            name = f"rs_shape_{len(freed)}_{n.name or n.output[0]}"
            g.initializer.append(numpy_helper.from_array(new, name))
            n.input[1] = name
            freed.append(n.name or n.output[0])
    return freed


def _replace_input(graph, old: str, new: str) -> None:
    for n in graph.node:
        n.input[:] = [new if x == old else x for x in n.input]


def _replace_output(graph, old: str, new: str) -> None:
    for n in graph.node:
        n.output[:] = [new if x == old else x for x in n.output]
        n.input[:] = [new if x == old else x for x in n.input]


def _topological(graph) -> None:
    """Order the nodes so each comes after what it reads (the new ones were put first)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(x in known for x in n.input)]
        if not ready:
            raise NotStateful("the rewritten graph has a cycle or reads a tensor nothing computes")
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def _prune(graph) -> None:
    """Drop the nodes nothing uses any more (the old zero states' builders, the dropped outputs' ops), and the
    initializers they read."""
    needed = {o.name for o in graph.output}
    keep = []
    for n in reversed(list(graph.node)):
        if any(o in needed for o in n.output if o):
            keep.append(n)
            needed.update(i for i in n.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    used = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)
    inputs = [i for i in graph.input if i.name in needed or i.name in ("tokens", "lengths", "h0", "c0")]
    del graph.input[:]
    graph.input.extend(inputs)


def parity(original, rewritten: Rewritten, kind: str, vocab: int, pad_id: int | None) -> float:
    """The largest difference between the original graph's logits and the rewritten graph's from zero state, on
    the same whole sequences (token ids drawn at random; the original's fixed sizes kept)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    old = ort.InferenceSession(original.SerializeToString(), so, providers=["CPUExecutionProvider"])
    new = ort.InferenceSession(rewritten.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = old.get_inputs()[0]
    dims = [d if isinstance(d, int) and d > 0 else n for d, n in zip(feed.shape, (3, 12))]
    ids = np.array([i for i in range(vocab) if i != pad_id])
    tokens = np.random.default_rng(0).choice(ids, size=dims)
    want = old.run(None, {feed.name: tokens.astype(np.int32 if "int32" in feed.type else np.int64)})
    names = [o.name for o in old.get_outputs()]
    want = want[names.index(next(iter(k for k, v in rewritten.renamed.items() if v == "logits")))]
    diff = float(np.abs(run(new, rewritten, kind, tokens) - want).max())
    # and on a batch and a length the export did not fix: each row of three as it is alone
    more = np.random.default_rng(1).choice(ids, size=(3, 9))
    batched = run(new, rewritten, kind, more)
    alone = np.concatenate([run(new, rewritten, kind, more[i:i + 1]) for i in range(3)])
    return max(diff, float(np.abs(batched - alone).max()))


def run(sess, rewritten: Rewritten, kind: str, tokens: np.ndarray) -> np.ndarray:
    """The rewritten graph's logits for whole sequences, from a zero state."""
    if kind == "lm":
        zero = np.zeros((rewritten.layers, tokens.shape[0], rewritten.hidden), np.float32)
        state = {s: zero for s in (["h0", "c0"] if rewritten.cell == "lstm" else ["h0"])}
        return sess.run(["logits"], {"tokens": tokens.astype(np.int64), **state})[0]
    return sess.run(["logits"], {"tokens": tokens.astype(np.int64),
                                 "lengths": np.full(tokens.shape[0], tokens.shape[1], np.int64)})[0]
