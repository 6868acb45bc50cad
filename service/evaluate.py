"""`rnnserve eval`: score an exported artifact with onnxruntime alone.

Language model: bits per character over a text file (whatever the tokenizer:
the tokens' losses over the characters they stand for), read as parallel
streams whose state is carried chunk to chunk. Classifier: accuracy, macro-F1,
per-class precision/recall and the confusion matrix over a labelled CSV/TSV.
`classification_report` is also what training reports, so the figures agree.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .artifact import ArtifactError, load_artifact
from .classifier import classify_texts
from .labelled import read_labelled, read_text
from .tokenizer import EncodeError

LN2 = math.log(2)


def classification_report(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    k = len(labels)
    conf = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred):
        conf[t][p] += 1
    per_class, f1s = {}, []
    for i, name in enumerate(labels):
        tp, support = conf[i][i], sum(conf[i])
        predicted = sum(conf[r][i] for r in range(k))
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support:
            f1s.append(f1)
    n = len(y_true)
    return {"accuracy": sum(conf[i][i] for i in range(k)) / n if n else 0.0,
            "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0, "n": n, "per_class": per_class,
            "confusion": conf, "labels": labels}


def lm_bpc(art, ids: list[int], chars: list[int] | None = None, streams: int = 16, chunk: int = 256) -> dict:
    """The text's ids read as `streams` parallel rows, state carried chunk to chunk: cross-entropy per token
    (`loss`, `perplexity`) and bits per character (`bpc`: the predicted tokens' losses in bits over the
    characters they stand for, `chars` per token; one each when None, as for a character model)."""
    streams = max(1, min(streams, len(ids) // 2))
    n = len(ids) // streams
    rows = np.asarray(ids[: n * streams], dtype=np.int64).reshape(streams, n)
    widths = np.asarray((chars if chars is not None else [1] * len(ids))[: n * streams]).reshape(streams, n)
    state = art.zero_state(streams)
    total, count, n_chars = 0.0, 0, 0
    for i in range(0, n - 1, chunk):
        x = rows[:, i:i + chunk]
        y = rows[:, i + 1:i + 1 + chunk]
        x = x[:, : y.shape[1]]
        logits, state = art.run(x, state)
        logits = logits.astype(np.float64)
        m = logits.max(-1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
        picked = np.take_along_axis(logits, y[..., None], -1)[..., 0]
        total += float((logz - picked).sum())
        count += y.size
        n_chars += int(widths[:, i + 1:i + 1 + y.shape[1]].sum())
    loss = total / count
    return {"bpc": total / LN2 / max(1, n_chars), "loss": loss, "perplexity": math.exp(loss), "tokens": count,
            "characters": n_chars}


def langid_py(labels: list[str]):
    """langid.py (PyPI `langid`, Lui & Baldwin 2012) restricted to these labels: the peer `--compare-langid`
    measures on the same texts. A development dependency, imported only here."""
    try:
        from langid.langid import LanguageIdentifier, model
    except ImportError:
        raise ArtifactError("--compare-langid needs langid.py: pip install langid (in the dev extra)") from None
    ident = LanguageIdentifier.from_modelstring(model, norm_probs=False)
    ident.set_languages(labels)
    return lambda text: ident.classify(text)[0]


def evaluate(artifact: str | Path, data: str | Path, int8: bool = False, limit: int | None = None,
             first_chars: int | None = None, compare_langid: bool = False, streams: int = 16) -> dict:
    """Score an artifact on a file. For a classifier, `first_chars` keeps only the first N characters of every
    text (how short inputs fare) and `compare_langid` scores langid.py on exactly the same texts."""
    art = load_artifact(artifact, int8=int8)
    path = Path(data)
    if art.kind == "lm":
        text = read_text(path)[:limit]
        try:
            ids, chars = art.tokenizer.encode_counted(text)
        except EncodeError as e:
            raise ArtifactError(f"{path}: {e}") from None
        if len(ids) < 4:
            raise ArtifactError(f"{path}: too little text to evaluate ({len(ids)} tokens)")
        r = lm_bpc(art, ids, chars, streams=streams)
        unk = art.tokenizer.unk_id
        r.update(kind="lm", artifact=str(artifact), data=str(path), onnx=art.onnx_file,
                 tokenizer=art.tokenizer.type, unknown_tokens=sum(1 for i in ids if i == unk) if unk is not None else 0)
        return r
    labelled = read_labelled(path)
    rows = labelled.rows[:limit]
    label_ids = {l: i for i, l in enumerate(art.labels)}
    unknown: dict[str, int] = {}
    known = []
    for label, text in rows:
        if label in label_ids:
            known.append((label, text))
        else:
            unknown[label] = unknown.get(label, 0) + 1
    if not known:
        raise ArtifactError(f"{path}: no row has a label the model knows ({', '.join(art.labels)})")
    texts = [text[:first_chars] if first_chars else text for _, text in known]
    truth = [label_ids[l] for l, _ in known]
    preds = [int(p.argmax()) for p in classify_texts(art, texts)]
    r = classification_report(truth, preds, art.labels)
    r.update(kind="classifier", artifact=str(artifact), data=str(path), onnx=art.onnx_file,
             unknown_labels=unknown, rows_read=len(labelled.rows), format=labelled.format, first_chars=first_chars)
    if compare_langid:
        peer = langid_py(art.labels)
        r["langid_py"] = classification_report(truth, [label_ids[peer(t)] for t in texts], art.labels)
    return r


def format_report(r: dict) -> str:
    if r["kind"] == "lm":
        s = (f"{r['artifact']} ({r['onnx']}) on {r['data']}\n"
             f"  bits/char   {r['bpc']:.4f}\n  perplexity  {r['perplexity']:.3f} per token\n"
             f"  characters  {r['characters']:,}\n  tokens      {r['tokens']:,} ({r['tokenizer']})")
        if r["unknown_tokens"]:
            s += f"\n  unknown     {r['unknown_tokens']:,} tokens outside the vocabulary"
        return s
    labels = r["labels"]
    w = max(7, *(len(l) for l in labels)) + 1
    lines = [f"{r['artifact']} ({r['onnx']}) on {r['data']}: {r['rows_read']:,} rows read ({r['format']}), "
             f"{r['n']:,} scored",
             f"  accuracy  {r['accuracy']:.4f}", f"  macro-F1  {r['macro_f1']:.4f}", "",
             "class".ljust(w) + "precision".rjust(10) + "recall".rjust(8) + "f1".rjust(8) + "n".rjust(7)]
    for l in labels:
        c = r["per_class"][l]
        lines.append(l.ljust(w) + f"{c['precision']:>10.3f}{c['recall']:>8.3f}{c['f1']:>8.3f}{c['support']:>7}")
    lines += ["", "confusion (rows: true, columns: predicted)", "".ljust(w) + "".join(l.rjust(w) for l in labels)]
    lines += [labels[i].ljust(w) + "".join(str(v).rjust(w) for v in row) for i, row in enumerate(r["confusion"])]
    if r["unknown_labels"]:
        lines.append(f"\nrows with labels the model does not know (left out): {r['unknown_labels']}")
    if r.get("first_chars"):
        lines.insert(1, f"  (the first {r['first_chars']} characters of each text)")
    if "langid_py" in r:
        peer = r["langid_py"]
        lines += ["", "langid.py on the same texts (restricted to these labels)",
                  f"  accuracy  {peer['accuracy']:.4f}   (this model {r['accuracy']:.4f})",
                  f"  macro-F1  {peer['macro_f1']:.4f}   (this model {r['macro_f1']:.4f})",
                  "  recall    " + "  ".join(f"{l} {peer['per_class'][l]['recall']:.3f}/{r['per_class'][l]['recall']:.3f}"
                                             for l in labels) + "   (langid.py/this model)"]
    return "\n".join(lines)
