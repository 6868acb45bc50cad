"""Export a trained run to an ONNX artifact with explicit recurrent state.

The contract (docs/artifact.md):

    language model  inputs  tokens int64 [batch, time], h0 float32 [layers, batch, hidden], c0 (LSTM only)
                    outputs logits float32 [batch, time, vocab], hn, cn (LSTM only)
    classifier      inputs  tokens int64 [batch, time] (padded with pad_id), lengths int64 [batch]
                    outputs logits float32 [batch, classes]

`batch` and `time` are dynamic. The recurrent layers come out as ONNX's native
LSTM/GRU operators (the TorchScript exporter emits them; for the classifier it
turns packed sequences into the operator's `sequence_lens`). Parity with
PyTorch is measured on the run's own validation text before anything is
written; export fails, leaving nothing behind, when it is worse than 1e-4.
"""
from __future__ import annotations

import datetime as dt
import json
from contextlib import contextmanager
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from service.artifact import io_names, sha256_file  # one definition of the contract for writer and reader

from .models import Classifier, LanguageModel
from .train import load_run, pad_batch

FORMAT_VERSION = 1
PARITY_LIMIT = 1e-4


class ExportError(Exception):
    pass


class _LSTMStep(nn.Module):
    def __init__(self, lm: LanguageModel):
        super().__init__()
        self.lm = lm

    def forward(self, tokens, h0, c0):
        logits, (hn, cn) = self.lm(tokens, (h0, c0))
        return logits, hn, cn


class _GRUStep(nn.Module):
    def __init__(self, lm: LanguageModel):
        super().__init__()
        self.lm = lm

    def forward(self, tokens, h0):
        return self.lm(tokens, h0)


def _export_graph(model: nn.Module, path: Path, opset: int) -> None:
    if isinstance(model, LanguageModel):
        wrapper = _LSTMStep(model) if model.cell == "lstm" else _GRUStep(model)
        state = model.init_state(2)
        args = (torch.zeros(2, 3, dtype=torch.long),) + (state if isinstance(state, tuple) else (state,))
        inputs, outputs = io_names("lm", model.cell)
        axes = {"tokens": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}}
        axes.update({n: {1: "batch"} for n in inputs[1:] + outputs[1:]})
    else:
        wrapper = model
        args = (torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 2]))
        inputs, outputs = io_names("classifier", model.cell)
        axes = {"tokens": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: it emits native LSTM/GRU nodes (the dynamo exporter
        # cannot trace packed sequences, which the classifier needs).
        torch.onnx.export(wrapper.eval(), args, str(path), dynamo=False, opset_version=opset,
                          input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          do_constant_folding=True)
    onnx.checker.check_model(str(path))


def recurrent_ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type in ("LSTM", "GRU", "RNN", "Loop", "Scan")]


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@torch.no_grad()
def lm_parity(model: LanguageModel, onnx_path: Path, token_rows: list[list[int]], prefill: int = 24,
              steps: int = 8) -> float:
    """Max |logit| (and state) difference over a batched prefill then single-token steps."""
    sess = _session(onnx_path)
    n = min(len(r) for r in token_rows)
    prefill, steps = min(prefill, max(1, n - 1)), min(steps, max(0, n - min(prefill, max(1, n - 1))))
    tokens = torch.tensor([r[: prefill + steps] for r in token_rows])
    state = model.init_state(len(token_rows))
    feed_state = list(state) if isinstance(state, tuple) else [state]
    names, _ = io_names("lm", model.cell)
    worst = 0.0
    chunks = [(0, prefill)] + [(prefill + k, prefill + k + 1) for k in range(steps)]
    for a, b in chunks:
        x = tokens[:, a:b]
        logits, state = model(x, state)
        outs = sess.run(None, {"tokens": x.numpy(), **{nm: s.numpy() for nm, s in zip(names[1:], feed_state)}})
        ref_state = list(state) if isinstance(state, tuple) else [state]
        worst = max(worst, float(np.abs(outs[0] - logits.numpy()).max()),
                    *(float(np.abs(o - r.numpy()).max()) for o, r in zip(outs[1:], ref_state)))
        feed_state = [torch.from_numpy(o) for o in outs[1:]]
    return worst


@torch.no_grad()
def classifier_parity(model: Classifier, onnx_path: Path, seqs: list[list[int]], pad_id: int) -> float:
    sess = _session(onnx_path)
    x, lengths = pad_batch(seqs, pad_id)
    ref = model(x, lengths).numpy()
    got = sess.run(None, {"tokens": x.numpy(), "lengths": lengths.numpy()})[0]
    return float(np.abs(got - ref).max())


def _parity(model, path: Path, tok, texts: list[str]) -> float:
    """Parity on these texts (a run's held-out sample), or on random ids of the vocabulary when there are none
    (an imported model may come without text)."""
    rows = [r for r in (tok.encode(t) for t in texts if t) if r]
    if not rows:
        rng = np.random.default_rng(0)
        ids = np.array([i for i in range(tok.vocab_size) if i != tok.pad_id])
        rows = [[int(x) for x in rng.choice(ids, n)] for n in (32, 32, 32, 32)]
    if isinstance(model, LanguageModel):
        n = min(32, min(len(r) for r in rows))
        if n < 2:
            return _parity(model, path, tok, [])
        rows = [r[:n] for r in rows[:8]]
        if len(rows) == 1:
            rows = rows * 2
        return lm_parity(model, path, rows, prefill=n // 2, steps=n - n // 2)
    seqs = [r[:4 * 400] for r in rows[:16]]
    if len(seqs) == 1:
        seqs.append(seqs[0][: max(1, len(seqs[0]) // 2)])
    return classifier_parity(model, path, seqs, tok.pad_id or 0)


def chat_format(template_file: str | Path | None, stop: list[str] | None) -> dict:
    """The manifest's chat format (`--chat-template FILE`, `--chat-stop TEXT`): checked to compile in the
    service's sandbox; {} for the service's default."""
    if template_file is None and not stop:
        return {}
    from service.chat import ChatFormat, ChatTemplateError
    text = None
    if template_file is not None:
        try:
            text = Path(template_file).read_text(encoding="utf-8")
        except (OSError, ValueError) as e:
            raise ExportError(f"--chat-template {template_file}: cannot read it ({e})") from None
    try:
        fmt = ChatFormat(text, stop or None)
        fmt.render([{"role": "user", "content": "Hello"}])
    except ChatTemplateError as e:
        raise ExportError(f"--chat-template {template_file}: {e}") from None
    return {"chat_template": text, "chat_stop": fmt.stop}


def export(run_dir: str | Path, out: str | Path, opset: int = 17, quantize: str | None = None,
           force: bool = False, chat: dict | None = None) -> dict:
    """A run folder (`rnnserve train`) as an artifact; `chat` the chat format (chat_format)."""
    run = Path(run_dir)
    model, tok, metrics = load_run(run)
    if chat and model.config["kind"] != "lm":
        raise ExportError("--chat-template and --chat-stop are for a language model")
    sample_path = run / "val_sample.json"
    sample = json.loads(sample_path.read_text()) if sample_path.exists() else {"texts": []}
    train = metrics.get("train", {})
    lm = model.config["kind"] == "lm"
    return write_artifact(
        model, tok, out, parity_texts=sample["texts"], opset=opset, quantize=quantize, force=force,
        held_out=sample.get("held_out"),
        labels=None if lm else metrics.get("labels") or train.get("labels"),
        max_len=None if lm else train.get("max_len"),
        # a document boundary fed before a fresh prompt, where the vocabulary has one (word level has no newline)
        bos_text="\n" if lm and tok.encode("\n") else None,
        metrics={k: v for k, v in metrics.items() if k not in ("history", "train")},
        exported_from={"run_dir": str(run.resolve()), "checkpoint_sha256": sha256_file(run / "checkpoint.pt"),
                       "train_args": train},
        tokenizer_file=run / "tokenizer.json", chat=chat)


def write_artifact(model: nn.Module, tok, out: str | Path, *, parity_texts: list[str], labels: list[str] | None,
                   max_len: int | None, bos_text: str | None, metrics: dict, exported_from: dict, opset: int = 17,
                   quantize: str | None = None, force: bool = False, tokenizer_file: Path | None = None,
                   measure=None, chat: dict | None = None, held_out=None,
                   held_out_source: str = "held-out text") -> dict:
    """The one way out to an artifact, for a trained run and an imported model alike: the graph exported, parity
    with PyTorch checked (refused above PARITY_LIMIT), the manifest written. `measure(folder) -> dict`, when
    given, adds figures measured on the finished artifact to the manifest's metrics. `held_out` (a language
    model's text, a classifier's [label, text] rows) is what an int8 model's cost is measured on (export/int8.py).
    Built in a temporary
    folder beside `out` and renamed into place: a refusal leaves nothing behind."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"{out}: already exists and is not empty (use --force to replace it)")
    with staged(out) as tmp:
        onnx_path = tmp / "model.onnx"
        _export_graph(model, onnx_path, opset)
        parity = _parity(model, onnx_path, tok, parity_texts)
        if not parity <= PARITY_LIMIT:
            raise ExportError(f"parity check failed: max |ONNX - PyTorch| = {parity:.3g} > {PARITY_LIMIT} "
                              f"(nothing written to {out})")
        cfg = model.config
        lm = cfg["kind"] == "lm"
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": cfg["kind"],
            "cell": cfg["cell"],
            "layers": cfg["num_layers"],
            "hidden": cfg["hidden_size"],
            "embed": cfg["embed_dim"],
            "vocab_size": cfg["vocab_size"],
            "bidirectional": not lm,
            "inputs": io_names(cfg["kind"], cfg["cell"])[0],
            "outputs": io_names(cfg["kind"], cfg["cell"])[1],
            "labels": labels,
            # what a classifier reads at once, as trained: characters, or tokens for a subword tokenizer
            "max_chars": max_len if not lm and tok.type == "char" else None,
            **({} if lm or tok.type == "char" else {"max_tokens": max_len}),
            "pad_id": tok.pad_id,
            "unk_id": tok.unk_id,
            "bos_text": bos_text,
            **(chat or {}),
            "tokenizer": "tokenizer.json",
            "tokenizer_type": tok.type,
            "onnx": "model.onnx",
            "onnx_sha256": sha256_file(onnx_path),
            "onnx_bytes": onnx_path.stat().st_size,
            "opset": opset,
            "recurrent_ops": recurrent_ops(onnx_path),
            "metrics": metrics,
            "parity": parity,
            "int8": None,
            "exported_from": {**exported_from, "torch": torch.__version__, "onnx": onnx.__version__,
                              "onnxruntime": ort.__version__,
                              "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        }
        if quantize == "int8":
            q = tmp / "model.int8.onnx"
            how = int8_model(cfg["kind"], onnx_path, q, tok, held_out, held_out_source, labels, parity_texts)
            manifest["int8"] = {"onnx": q.name, "onnx_sha256": sha256_file(q), "onnx_bytes": q.stat().st_size,
                                "parity": _parity(model, q, tok, parity_texts), **how}
        elif quantize:
            raise ExportError(f"--quantize: unknown mode {quantize!r} (known: int8)")
        finish(tmp, manifest, tok, tokenizer_file, measure)
    return manifest


def int8_model(kind: str, src: Path, dst: Path, tok, held_out, source: str, labels: list[str] | None,
               parity_texts: list[str]) -> dict:
    """`model.int8.onnx` written from the float graph, and what the manifest records of it (export/int8.py):
    how it was quantised, whether rows stay independent, and its quality cost on held-out text."""
    from . import int8
    if kind == "lm":
        return int8.quantize_lm(src, dst, tok, held_out if isinstance(held_out, str) else None, source)
    rows = [(l, t) for l, t in (held_out or []) if t]
    index = {l: i for i, l in enumerate(labels or [])}
    known = [(index[l], t) for l, t in rows if l in index] if labels else []
    texts = [t for _, t in known] if known else [t for _, t in rows] or [t for t in parity_texts if t]
    ids = [r for r in (tok.encode(t) for t in texts) if r]
    if not ids:  # nothing to read: random ids of the vocabulary, as the parity check does
        rng = np.random.default_rng(0)
        ids = [[int(x) for x in rng.integers(0, tok.vocab_size, 64)] for _ in range(64)]
    return int8.quantize_classifier(src, dst, ids,
                                    [i for i, _ in known] if known else None, tok.pad_id or 0)


@contextmanager
def staged(out: Path):
    """A temporary folder beside `out` that replaces `out` when the block ends, and is removed when it raises:
    a refused export or import leaves nothing behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an artifact is read by other users (e.g. in the image)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def finish(folder: Path, manifest: dict, tok, tokenizer_file: Path | None = None, measure=None) -> None:
    """An artifact's tokenizer.json (a `tokenizers` file copied as it is) and model.json; `measure(folder)`, when
    given, adds figures measured on the finished folder to the manifest's metrics."""
    if tokenizer_file is not None:
        shutil.copy(tokenizer_file, folder / "tokenizer.json")
    else:
        tok.save(folder / "tokenizer.json")
    write_manifest(folder, manifest)
    if measure is not None:
        manifest["metrics"] = {**manifest["metrics"], **measure(folder)}
        write_manifest(folder, manifest)


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "model.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
