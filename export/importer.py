"""`rnnserve import`: models trained elsewhere, taken in through the same door as ours.

A PyTorch state dict (`torch.save(model.state_dict(), path)`, read with `weights_only=True`: no pickled code
runs) of the textbook shape, Embedding -> nn.LSTM|nn.GRU -> Linear, whatever its attribute names: the
architecture is read off the tensors (vocabulary and embedding width from the embedding matrix; the cell from
the gate blocks, 4 for an LSTM and 3 for a GRU; hidden size, layers and directions from `weight_ih_l{k}
[_reverse]`; classes from the output layer). The weights are loaded into rnnserve's own LanguageModel or
Classifier and leave through `onnx_export.write_artifact`, the exporter's one way out: one parity check, one
manifest. Anything outside that shape is refused, naming the tensors that could not be placed.

An ONNX graph exported elsewhere is checked against the artifact contract (docs/artifact.md), names (after
`--rename`), dtypes, ranks, dynamic axes and state shapes, then by behaviour (a sequence fed whole and in
chunks with the state passed back gives the same logits; a padded classifier row gives the row's own
answer), every reason at once, and copied in.

A refused import writes nothing: artifacts are built in a temporary folder beside `--out` and renamed.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service import tokenizer as T
from service.artifact import io_names, sha256_file

from .onnx_export import PARITY_LIMIT, ExportError, chat_format, finish, int8_model, staged, write_artifact

DEFAULT_MAX_LEN = 400  # what `rnnserve train classifier` reads of a text (characters; tokens for other vocabularies)
_RNN_KEY = re.compile(r"^(?P<module>(?:.+\.)?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh)_l(?P<layer>\d+)"
                      r"(?P<rev>_reverse)?$")
EMBED_NAMES = {"embedding", "embed", "emb", "encoder", "embeddings", "wte", "tok_emb", "word_embeddings",
               "token_embedding", "char_embedding"}
HEAD_NAMES = {"fc", "head", "out", "decoder", "linear", "proj", "classifier", "lm_head", "output", "fc_out", "dense",
              "fc1", "logits"}
CHECKPOINT_KEYS = ("model_state_dict", "state_dict", "model", "net", "weights", "module")


class ImportRefused(ExportError):
    """A model that cannot be imported; the message says why and, where there is one, the fix."""


# ----------------------------------------------------------------------------------------- vocabularies


def read_vocabulary(path: str | Path, unk_token: str | None = None, pad_token: str | None = None) -> T.Tokenizer:
    """`--tokenizer`: a `tokenizers` tokenizer.json, a JSON {token: id} map (or list) or a text file with one
    token a line (id = line number), as a tokenizer (service.tokenizer.from_vocabulary decides char or word)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        raise ImportRefused(f"--tokenizer {path}: cannot read it ({e})") from None
    try:
        d = json.loads(text)
    except ValueError:
        d = None
    names = {"unk_token": unk_token, "pad_token": pad_token}
    if isinstance(d, dict) and isinstance(d.get("model"), dict):  # the `tokenizers` library's own file
        tok = T.loads(text, str(path))
        for flag, name in names.items():
            if name is not None:
                i = tok.tk.token_to_id(name)
                if i is None:
                    raise ImportRefused(f"--{flag.replace('_', '-')} {name!r}: not in {path}")
                setattr(tok, flag.replace("token", "id"), i)
        return tok
    if isinstance(d, dict):
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in d.items()):
            raise ImportRefused(f"--tokenizer {path}: a JSON map must be {{token: id}} with integer ids")
        itos = [None] * len(d)
        for token, i in d.items():
            if not 0 <= i < len(d) or itos[i] is not None:
                raise ImportRefused(f"--tokenizer {path}: ids must be 0..{len(d) - 1}, each once (id {i} of {token!r})")
            itos[i] = token
    elif isinstance(d, list) and all(isinstance(t, str) for t in d):
        itos = d
    else:
        itos = text.split("\n")
        if itos and itos[-1] == "":
            itos.pop()  # the file's last line break
        empty = [n for n, t in enumerate(itos, 1) if t == ""]
        if empty:
            raise ImportRefused(f"--tokenizer {path}: line {empty[0]} is empty; a vocabulary that holds a newline or "
                               "an empty token must be given as a JSON {token: id} map")
    try:
        return T.from_vocabulary(itos, unk_token or T.UNK, pad_token or T.PAD)
    except T.TokenizerError as e:
        raise ImportRefused(f"--tokenizer {path}: {e}") from None


# ----------------------------------------------------------------------------------------- state dicts


@dataclass
class Shape:
    """What the tensors say: Embedding(vocab, embed) -> cell x layers x directions (hidden) -> Linear(classes)."""
    cell: str
    vocab: int
    embed: int
    hidden: int
    layers: int
    directions: int
    classes: int
    weights: dict  # rnnserve's parameter names -> tensors


def load_state_dict(path: Path) -> dict:
    import pickle

    import torch
    fix = f"save the weights alone: torch.save(model.state_dict(), {str(path)!r})"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL (\S+)", str(e))
        what = f" ({named.group(1)})" if named else ""
        raise ImportRefused(f"--state-dict {path}: holds pickled objects{what}, a whole module or more than "
                            f"weights, which are never loaded: their code would run. To import, {fix}") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise ImportRefused(f"--state-dict {path}: not a file torch.save wrote ({e})") from None
    if not isinstance(obj, dict) or not obj:
        raise ImportRefused(f"--state-dict {path}: holds a {type(obj).__name__}, not a state dict; {fix}")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), dict)]
        keys = ", ".join(sorted(map(str, obj))[:8])
        if inner:
            raise ImportRefused(f"--state-dict {path}: a training checkpoint (keys: {keys}), not a state dict. Save "
                                f"its weights alone: torch.save(torch.load({str(path)!r})[{inner[0]!r}], 'model.pt'), "
                                "and import model.pt")
        raise ImportRefused(f"--state-dict {path}: not a state dict of tensors (keys: {keys}); {fix}")
    return {k: v.detach().float() if v.is_floating_point() else v for k, v in obj.items()}


def infer_shape(sd: dict, kind: str) -> Shape:
    """Place every tensor of a state dict in Embedding -> LSTM|GRU -> Linear, or refuse, naming what does not fit."""
    import torch
    rnn: dict[str, dict] = {}
    other: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        m = _RNN_KEY.match(key)
        if m:
            rnn.setdefault(m["module"], {})[(m["kind"], int(m["layer"]), bool(m["rev"]))] = (key, t)
        else:
            module, _, name = key.rpartition(".")
            other.setdefault(module, {})[name] = t
    if not rnn:
        raise ImportRefused("no recurrent layer: no weight_ih_l0 / weight_hh_l0 tensors of an nn.LSTM or nn.GRU "
                           f"(tensors: {', '.join(list(sd)[:12])})")
    if len(rnn) > 1:
        raise ImportRefused(f"more than one recurrent module ({', '.join(m.rstrip('.') or '(top)' for m in rnn)}): "
                           "only Embedding -> one nn.LSTM|nn.GRU -> Linear is imported")
    (prefix, params), = rnn.items()
    name = prefix.rstrip(".")
    w_hh = params.get(("weight_hh", 0, False))
    w_ih = params.get(("weight_ih", 0, False))
    if w_hh is None or w_ih is None:
        raise ImportRefused(f"{name}: weight_ih_l0 and weight_hh_l0 are both needed")
    hidden = w_hh[1].shape[1]
    gates, rest = divmod(w_hh[1].shape[0], hidden)
    if rest or gates not in (3, 4):
        raise ImportRefused(f"{name}.weight_hh_l0 {tuple(w_hh[1].shape)}: {w_hh[1].shape[0] / hidden:g} gate blocks of "
                           f"{hidden}; an LSTM has 4, a GRU 3 (a plain nn.RNN, 1, is not served)")
    cell = "lstm" if gates == 4 else "gru"
    layers = 1 + max(layer for _, layer, _ in params)
    directions = 2 if any(rev for _, _, rev in params) else 1
    embed = w_ih[1].shape[1]
    weights, problems = {}, []
    has_bias = ("bias_ih", 0, False) in params
    for layer in range(layers):
        for rev in ([False, True] if directions == 2 else [False]):
            suffix = f"_l{layer}" + ("_reverse" if rev else "")
            width = embed if layer == 0 else hidden * directions
            want = {"weight_ih": (gates * hidden, width), "weight_hh": (gates * hidden, hidden)}
            if has_bias:
                want.update(bias_ih=(gates * hidden,), bias_hh=(gates * hidden,))
            for kind_, shape in want.items():
                got = params.pop((kind_, layer, rev), None)
                if got is None:
                    problems.append(f"{prefix}{kind_}{suffix} missing")
                elif tuple(got[1].shape) != shape:
                    problems.append(f"{got[0]} {tuple(got[1].shape)}, expected {shape}")
                else:
                    weights[f"rnn.{kind_}{suffix}"] = got[1]
            if not has_bias:  # bias=False: the same arithmetic with zero biases
                for kind_ in ("bias_ih", "bias_hh"):
                    weights[f"rnn.{kind_}{suffix}"] = torch.zeros(gates * hidden)
    problems += [f"{key} {tuple(t.shape)}" for key, t in params.values()]  # e.g. a bias without its layer
    extra = other.pop(name, {})  # a projection (proj_size: weight_hr_l0) and anything else inside the module
    problems += [f"{prefix}{k} {tuple(t.shape)}" for k, t in extra.items()]

    def is_embedding(module, p):
        return set(p) == {"weight"} and p["weight"].dim() == 2 and p["weight"].shape[1] == embed

    def is_head(module, p):
        return set(p) <= {"weight", "bias"} and "weight" in p and p["weight"].dim() == 2 and \
            p["weight"].shape[1] == hidden * directions and \
            ("bias" not in p or p["bias"].shape == p["weight"].shape[:1])

    def pick(test, names, what):
        found = [m for m, p in other.items() if test(m, p)]
        if len(found) > 1:
            named = [m for m in found if m.rpartition(".")[2].lower() in names]
            found = named if len(named) == 1 else found
        if len(found) != 1:
            problems.append(f"{what}: {'none found' if not found else 'several candidates: ' + ', '.join(found)}")
            return None, None
        return found[0], other[found[0]]

    emb_name, emb = pick(is_embedding, EMBED_NAMES, f"an embedding (a weight of shape (vocabulary, {embed}))")
    if emb_name is not None:
        del other[emb_name]
    head_name, head = pick(is_head, HEAD_NAMES, f"an output layer (a Linear reading {hidden * directions} features)")
    if head_name is not None:
        del other[head_name]
    problems += [f"{m + '.' if m else ''}{k} {tuple(t.shape)}" for m, p in other.items() for k, t in p.items()]
    if problems:
        raise ImportRefused("the state dict is not Embedding -> nn.LSTM|nn.GRU -> Linear; tensors that could not be "
                           "placed: " + "; ".join(problems))
    vocab, classes = emb["weight"].shape[0], head["weight"].shape[0]
    if kind == "lm":
        if directions != 1:
            raise ImportRefused(f"{name} is bidirectional: a language model reads left to right (a bidirectional "
                               "one is imported as a classifier)")
        if classes != vocab:
            raise ImportRefused(f"{head_name}.weight has {classes} rows, the embedding {emb_name}.weight {vocab}: a "
                               "language model's output layer scores every token of its vocabulary")
    elif directions != 2:
        raise ImportRefused(f"{name} reads one direction: rnnserve's classifier is bidirectional and reads the last "
                           "layer's final forward and backward states")
    weights["embed.weight"] = emb["weight"]
    weights["out.weight"] = head["weight"]
    weights["out.bias"] = head.get("bias", torch.zeros(classes))
    return Shape(cell, vocab, embed, hidden, layers, directions, classes, weights)


def build_model(shape: Shape, kind: str, pad_id: int | None):
    """rnnserve's own model class holding the imported weights (strict: every parameter filled)."""
    from .models import Classifier, LanguageModel
    if kind == "lm":
        model = LanguageModel(shape.vocab, shape.cell, shape.layers, shape.hidden, shape.embed, 0.0)
    else:
        model = Classifier(shape.vocab, shape.classes, shape.cell, shape.hidden, shape.embed, 0.0, shape.layers,
                           pad_id if pad_id is not None else 0)
    model.load_state_dict(shape.weights, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------- the command


@dataclass
class ImportArgs:
    kind: str  # lm | classifier
    tokenizer: str
    out: str
    state_dict: str | None = None
    onnx: str | None = None
    rename: str | None = None
    labels: str | None = None
    max_len: int | None = None
    bos_text: str | None = None
    unk_token: str | None = None
    pad_token: str | None = None
    check_text: str | None = None
    force: bool = False
    chat_template: str | None = None
    chat_stop: list[str] | None = None
    quantize: str | None = None  # int8: also model.int8.onnx, its cost measured on --check-text


def read_labels(value: str | None, classes: int | None) -> list[str] | None:
    if value is None:
        raise ImportRefused("--labels: a classifier needs its class names, in logit order (L1,L2,... or a file "
                           "with one a line)")
    path = Path(value)
    labels = [l.strip() for l in (path.read_text(encoding="utf-8").splitlines() if path.is_file()
                                  else value.split(","))]
    labels = [l for l in labels if l]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ImportRefused(f"--labels: at least two distinct names are needed (got {labels})")
    if classes is not None and len(labels) != classes:
        raise ImportRefused(f"--labels: {len(labels)} names, but the output layer has {classes} classes")
    return labels


def _checked_bos(tok, bos_text: str | None) -> str | None:
    if bos_text is None:
        return None
    try:
        ids = tok.encode(bos_text)
    except T.EncodeError as e:
        raise ImportRefused(f"--bos-text: {e}") from None
    if not ids:
        raise ImportRefused(f"--bos-text {bos_text!r}: encodes to no token in this vocabulary")
    return bos_text


def _source(path: Path, how: str, a: ImportArgs) -> dict:
    return {"imported": how, "source": str(path.resolve()), "source_sha256": sha256_file(path),
            "tokenizer_source": str(Path(a.tokenizer).resolve()),
            "tokenizer_source_sha256": sha256_file(Path(a.tokenizer))}


def _measure(kind: str, check_text: str | None):
    """`--check-text`: bits/char (LM) or accuracy (classifier, labelled CSV/TSV) of the finished artifact."""
    if check_text is None:
        return None

    def measure(folder: Path) -> dict:
        from service.artifact import ArtifactError
        from service.evaluate import evaluate
        try:
            r = evaluate(folder, check_text)
        except ArtifactError as e:
            raise ImportRefused(f"--check-text: {e}") from None
        keys = ("bpc", "perplexity", "characters", "tokens") if kind == "lm" else ("accuracy", "macro_f1", "n")
        return {"check_text": str(Path(check_text).resolve()), **{k: r[k] for k in keys}}
    return measure


def run_import(a: ImportArgs) -> dict:
    """Import a state dict or an ONNX graph as an artifact; returns its manifest."""
    if a.kind not in ("lm", "classifier"):
        raise ImportRefused(f"import {a.kind!r}: lm or classifier")
    if (a.state_dict is None) == (a.onnx is None):
        raise ImportRefused("give exactly one of --state-dict FILE.pt or --onnx FILE.onnx")
    if a.kind == "lm" and (a.labels or a.max_len):
        raise ImportRefused("--labels and --max-len are for a classifier")
    if a.kind == "classifier" and (a.bos_text is not None or a.chat_template or a.chat_stop):
        raise ImportRefused("--bos-text, --chat-template and --chat-stop are for a language model")
    out = Path(a.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not a.force:
        raise ImportRefused(f"{out}: already exists and is not empty (use --force to replace it)")
    tok = read_vocabulary(a.tokenizer, a.unk_token, a.pad_token)
    if a.state_dict is not None:
        return _import_state_dict(a, tok)
    return _import_onnx(a, tok)


def _check_vocab(tok, rows: int, where: str) -> None:
    if tok.vocab_size != rows:
        raise ImportRefused(f"--tokenizer holds {tok.vocab_size} tokens, but {where} has {rows} rows: the vocabulary "
                           "must be the one the model was trained with")


def _import_state_dict(a: ImportArgs, tok) -> dict:
    path = Path(a.state_dict)
    shape = infer_shape(load_state_dict(path), a.kind)
    _check_vocab(tok, shape.vocab, "the embedding")
    lm = a.kind == "lm"
    labels = None if lm else read_labels(a.labels, shape.classes)
    model = build_model(shape, a.kind, tok.pad_id)
    texts = []
    if a.check_text:
        from service.labelled import read_labelled, read_text
        texts = ([t for _, t in read_labelled(a.check_text).rows[:16]] if not lm else
                 [read_text(a.check_text)[i * 200:(i + 1) * 200] for i in range(8)])
    return write_artifact(model, tok, a.out, parity_texts=texts, labels=labels, quantize=a.quantize,
                          held_out=_held_out(a), held_out_source=f"--check-text {a.check_text}",
                          max_len=None if lm else (a.max_len or DEFAULT_MAX_LEN),
                          bos_text=_checked_bos(tok, a.bos_text),
                          metrics={}, exported_from=_source(path, "state_dict", a), force=a.force,
                          tokenizer_file=_library_file(a.tokenizer), measure=_measure(a.kind, a.check_text),
                          chat=chat_format(a.chat_template, a.chat_stop))


def _held_out(a: ImportArgs):
    """What an int8 model's cost is measured on: --check-text (a language model's first 20,000 characters, a
    classifier's first 512 rows), or None."""
    if not (a.quantize and a.check_text):
        return None
    from service.labelled import read_labelled, read_text
    if a.kind == "lm":
        return read_text(a.check_text)[:20_000]
    return [[l, t] for l, t in read_labelled(a.check_text).rows[:512]]


def _library_file(path: str) -> Path | None:
    """The path when it is a `tokenizers` file (the artifact keeps it as it is), else None."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError:
        return None
    return Path(path) if isinstance(d, dict) and isinstance(d.get("model"), dict) else None


# ----------------------------------------------------------------------------------------- ONNX graphs


def _renames(value: str | None) -> dict[str, str]:
    out = {}
    for pair in filter(None, (p.strip() for p in (value or "").split(","))):
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ImportRefused(f"--rename {pair!r}: write OLD=NEW (several joined by commas)")
        out[old] = new
    return out


def _rename(graph, renames: dict[str, str]) -> list[str]:
    """Rename graph inputs/outputs and every reference to them; the names asked for that the graph lacks."""
    io = {v.name for v in list(graph.input) + list(graph.output)}
    missing = [old for old in renames if old not in io]
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.name in renames:
            v.name = renames[v.name]
    for node in graph.node:
        node.input[:] = [renames.get(x, x) for x in node.input]
        node.output[:] = [renames.get(x, x) for x in node.output]
    return missing


def _dims(v) -> list:
    """Each dimension: its fixed size, or its symbolic name (a dynamic axis), or None."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]


def check_graph(model, kind: str) -> tuple[dict, list[str]]:
    """Static checks of a graph against the artifact contract: (facts, reasons it fails)."""
    import onnx
    g = model.graph
    init = {i.name for i in g.initializer}
    inputs = {v.name: v for v in g.input if v.name not in init}
    outputs = {v.name: v for v in g.output}
    lstm = "c0" in inputs or "cn" in outputs
    ops = [n.op_type for n in g.node if n.op_type in ("LSTM", "GRU", "RNN", "Loop", "Scan")]
    if kind == "lm":
        cell = "lstm" if lstm else "gru"
    else:
        cell = "lstm" if "LSTM" in ops else "gru" if "GRU" in ops else None
    reasons = []
    if cell is None:
        reasons.append("no LSTM or GRU operator in the graph: the classifier's cell cannot be told")
        cell = "gru"
    want_in, want_out = io_names(kind, cell)
    for what, want, got in (("inputs", want_in, list(inputs)), ("outputs", want_out, list(outputs))):
        if sorted(want) != sorted(got):
            reasons.append(f"graph {what} {got}: the {kind} contract is {want} (use --rename OLD=NEW)")
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    spec = {"tokens": (i64, 2, [0, 1]), "lengths": (i64, 1, [0])}
    if kind == "lm":
        spec.update({n: (f32, 3, [1]) for n in ("h0", "c0", "hn", "cn")}, logits=(f32, 3, [0, 1]))
    else:
        spec["logits"] = (f32, 2, [0])
    facts = {"cell": cell, "ops": ops}
    for name, v in {**inputs, **outputs}.items():
        if name not in spec:
            continue
        dtype, rank, dynamic = spec[name]
        t = v.type.tensor_type
        dims = _dims(v)
        if t.elem_type != dtype:
            reasons.append(f"{name}: dtype {onnx.TensorProto.DataType.Name(t.elem_type)}, expected "
                           f"{onnx.TensorProto.DataType.Name(dtype)}")
        if len(dims) != rank:
            reasons.append(f"{name}: rank {len(dims)} {dims}, expected {rank}")
            continue
        fixed = [i for i in dynamic if isinstance(dims[i], int)]
        if fixed:
            axes = ["batch" if i == (1 if name[0] in "hc" else 0) else "time" for i in fixed]
            reasons.append(f"{name}: the {' and '.join(axes)} axis is fixed ({dims}); it must be dynamic")
        facts[name] = dims
    if kind == "lm":
        states = [(a, b) for a, b in (("h0", "hn"), ("c0", "cn")) if a in facts and b in facts]
        for a_, b_ in states:
            sa, sb = facts[a_], facts[b_]
            if not (isinstance(sa[0], int) and isinstance(sa[2], int)):
                reasons.append(f"{a_}: layers and hidden must be fixed sizes ({sa})")
            elif (sa[0], sa[2]) != (sb[0], sb[2]):
                reasons.append(f"state shapes differ: {a_} {sa} in, {b_} {sb} out")
        if "h0" in facts and "c0" in facts and (facts["h0"][0], facts["h0"][2]) != (facts["c0"][0], facts["c0"][2]):
            reasons.append(f"h0 {facts['h0']} and c0 {facts['c0']} differ")
    if "logits" in facts and not isinstance(facts["logits"][-1], int):
        reasons.append(f"logits: the last axis (vocabulary or classes) must be a fixed size ({facts['logits']})")
    return facts, reasons


def _behaviour(path: Path, kind: str, facts: dict, vocab: int, pad_id: int | None) -> tuple[float, list[str]]:
    """A sequence fed whole and in chunks (state passed back) gives the same logits; a padded classifier row
    gives the row's own answer. (max difference, reasons)"""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        return float("nan"), [f"onnxruntime cannot load it ({e})"]
    rng = np.random.default_rng(0)
    ids = np.array([i for i in range(vocab) if i != pad_id])
    try:
        if kind == "lm":
            layers, hidden = facts["h0"][0], facts["h0"][2]
            names = ["h0", "c0"] if "c0" in facts else ["h0"]
            tokens = rng.choice(ids, size=(3, 12))
            zero = {n: np.zeros((layers, 3, hidden), np.float32) for n in names}
            whole = sess.run(None, {"tokens": tokens, **zero})
            state, parts = zero, []
            for a_, b_ in ((0, 5), (5, 6), (6, 12)):
                out = sess.run(None, {"tokens": tokens[:, a_:b_], **state})
                parts.append(out[0])
                state = dict(zip(names, out[1:]))
            diff = max(float(np.abs(np.concatenate(parts, 1) - whole[0]).max()),
                       *(float(np.abs(s - w).max()) for s, w in zip(state.values(), whole[1:])))
            return diff, ([] if diff <= PARITY_LIMIT else
                          [f"fed in chunks with the state passed back, the logits differ from one call by {diff:.3g} "
                           f"(> {PARITY_LIMIT}): the graph does not carry its state through hn/cn"])
        lengths = np.array([7, 3, 12])
        tokens = np.full((3, 12), pad_id if pad_id is not None else 0, np.int64)
        for i, n in enumerate(lengths):
            tokens[i, :n] = rng.choice(ids, n)
        batch = sess.run(None, {"tokens": tokens, "lengths": lengths})[0]
        alone = [sess.run(None, {"tokens": tokens[i:i + 1, :n], "lengths": lengths[i:i + 1]})[0][0]
                 for i, n in enumerate(lengths)]
        diff = float(np.abs(np.stack(alone) - batch).max())
        return diff, ([] if diff <= PARITY_LIMIT else
                      [f"a padded row's logits differ from the same text alone by {diff:.3g} (> {PARITY_LIMIT}): "
                       "the graph lets padding reach the answer (lengths unused?)"])
    except Exception as e:  # a graph that fails to run on contract-shaped inputs
        return float("nan"), [f"running it on contract-shaped inputs failed: {str(e).splitlines()[0][:300]}"]


def _import_onnx(a: ImportArgs, tok) -> dict:
    import onnx
    path = Path(a.onnx)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx's own parse errors
        raise ImportRefused(f"--onnx {path}: not an ONNX model ({e})") from None
    renames = _renames(a.rename)
    missing = _rename(model.graph, renames)
    made = _stateful(model, a, tok, path) if not missing else None
    model = made.model if made else model
    facts, reasons = check_graph(model, a.kind)
    reasons = [f"--rename {old}: the graph has no input or output {old!r}" for old in missing] + reasons
    logits = facts.get("logits")
    vocab = logits[-1] if a.kind == "lm" and logits and isinstance(logits[-1], int) else None
    classes = logits[-1] if a.kind == "classifier" and logits and isinstance(logits[-1], int) else None
    if vocab is not None and vocab != tok.vocab_size:
        reasons.append(f"--tokenizer holds {tok.vocab_size} tokens, but the logits score {vocab}: the vocabulary "
                       "must be the one the model was trained with")
    labels = None
    if a.kind == "classifier":
        try:
            labels = read_labels(a.labels, classes)
        except ImportRefused as e:
            reasons.append(str(e))
    if reasons:
        raise ImportRefused(f"--onnx {path}: refused: " + "; ".join(reasons))
    want_in, want_out = io_names(a.kind, facts["cell"])
    _order(model.graph, want_in, want_out)
    with staged(Path(a.out)) as tmp:
        onnx_path = tmp / "model.onnx"
        onnx.save(model, str(onnx_path))
        diff, failed = _behaviour(onnx_path, a.kind, facts, tok.vocab_size, tok.pad_id)
        if failed:
            raise ImportRefused(f"--onnx {path}: refused: " + "; ".join(failed))
        lm = a.kind == "lm"
        layers, hidden = (facts["h0"][0], facts["h0"][2]) if lm else _classifier_size(model)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        manifest = {
            "format_version": 1, "kind": a.kind, "cell": facts["cell"], "layers": layers, "hidden": hidden,
            "embed": None, "vocab_size": tok.vocab_size, "bidirectional": None if lm else True,
            "inputs": want_in, "outputs": want_out, "labels": labels,
            "max_chars": (a.max_len or DEFAULT_MAX_LEN) if not lm and tok.type == "char" else None,
            **({} if lm or tok.type == "char" else {"max_tokens": a.max_len or DEFAULT_MAX_LEN}),
            "pad_id": tok.pad_id, "unk_id": tok.unk_id, "bos_text": _checked_bos(tok, a.bos_text),
            **chat_format(a.chat_template, a.chat_stop),
            "tokenizer": "tokenizer.json", "tokenizer_type": tok.type, "onnx": "model.onnx",
            "onnx_sha256": sha256_file(onnx_path), "onnx_bytes": onnx_path.stat().st_size, "opset": opset,
            "recurrent_ops": facts["ops"], "metrics": {},
            "parity": None,  # no PyTorch model to compare with: the behaviour checks stand in
            "checks": {"chunked_vs_whole" if lm else "padded_vs_alone": diff,
                       **({"stateless_vs_rewritten": made.parity} if made else {})},
            "int8": _int8(a, tok, onnx_path, labels),
            "exported_from": {**_source(path, "onnx", a), "renamed": renames or None,
                              "made_stateful": made.summary() if made else None,
                              "imported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        }
        finish(tmp, manifest, tok, _library_file(a.tokenizer), _measure(a.kind, a.check_text))
    return manifest


def _int8(a: ImportArgs, tok, onnx_path: Path, labels: list[str] | None) -> dict | None:
    """--quantize int8 for an imported graph: model.int8.onnx beside it (export/int8.py: per row where the
    graph has the shape of our own export, else ONNX Runtime's dynamic quantisation)."""
    if not a.quantize:
        return None
    q = onnx_path.parent / "model.int8.onnx"
    how = int8_model(a.kind, onnx_path, q, tok, _held_out(a), f"--check-text {a.check_text}", labels, [])
    return {"onnx": q.name, "onnx_sha256": sha256_file(q), "onnx_bytes": q.stat().st_size, "parity": None, **how}


def _stateful(model, a: ImportArgs, tok, path: Path):
    """A graph without the contract's state inputs (a language model's h0, a classifier's lengths) whose
    recurrent nodes start from zeros is rewritten into the contract (export/stateful.py) and proven equal to
    itself: None when the graph has them already."""
    from . import stateful as S
    g = model.graph
    init = {i.name for i in g.initializer}
    inputs = {i.name for i in g.input if i.name not in init}
    if ("h0" if a.kind == "lm" else "lengths") in inputs:
        return None
    if S.recurrent_nodes(g) and not S.is_stateless(model):
        return None  # its states are graph inputs already, under other names: --rename says which
    if not S.recurrent_nodes(g) and len(inputs) > 1:
        return None  # a graph with inputs beside the tokens: the contract checks name them
    try:
        made = S.make_stateful(model, a.kind)
        made.parity = S.parity(model, made, a.kind, tok.vocab_size, tok.pad_id)
    except S.NotStateful as e:
        raise ImportRefused(f"--onnx {path}: refused: {e}") from None
    except Exception as e:  # onnxruntime's errors running the rewritten graph
        raise ImportRefused(f"--onnx {path}: refused: the graph made stateful does not run "
                            f"({str(e).splitlines()[0][:300]})") from None
    if not made.parity <= S.PARITY:
        raise ImportRefused(f"--onnx {path}: refused: made stateful, the graph's logits from a zero state differ from "
                            f"the original's by {made.parity:.3g} (> {S.PARITY})")
    return made


def _order(graph, inputs: list[str], outputs: list[str]) -> None:
    """Put the graph's inputs and outputs in the contract's order (the loader compares them in order)."""
    init = {i.name for i in graph.initializer}
    by_name = {v.name: v for v in graph.input}
    rest = [v for v in graph.input if v.name in init and v.name not in inputs]
    ordered = [by_name[n] for n in inputs] + rest
    del graph.input[:]
    graph.input.extend(ordered)
    out_by = {v.name: v for v in graph.output}
    del graph.output[:]
    graph.output.extend(out_by[n] for n in outputs)


def _classifier_size(model) -> tuple[int | None, int | None]:
    """Layers and hidden size of a classifier graph, from its LSTM/GRU operators (None where it has none)."""
    nodes = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU")]
    hidden = next((a.i for n in nodes for a in n.attribute if a.name == "hidden_size"), None)
    return (len(nodes) or None), hidden
