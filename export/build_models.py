"""Rebuild the bundled models from Debian's packages (fortunes; manual pages, documentation and word lists for
the identifier): `make models`.

    python -m export.build_models [--only fortunes|fortunes-bpe|langid] [--lm-budget S] [--langid-budget S]

Writes models/fortunes, models/fortunes-bpe (the same text, byte-level BPE) and models/langid (artifacts,
each with a small fixed evaluation sample and the metrics measured on it) and build/models-report.json.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

from . import fortunes as F
from . import langid_data as L
from .onnx_export import export
from .train import ClassifierArgs, LMArgs, train_classifier, train_lm

REPO = Path(__file__).resolve().parents[1]


def _eval(artifact: Path, data: Path, int8: bool = False) -> dict:
    from service.evaluate import evaluate
    return evaluate(artifact, data, int8=int8)


def fortunes_args(text: Path, run: Path, budget: float, seed: int, tokenizer: str = "char") -> LMArgs:
    """The bundled fortune writers: the same text, split and budget, about the same number of parameters (1.18 M
    against 1.25 M): the char model 1 x 512 over 128-character chunks; the BPE one 1 x 320 with a 192-wide
    embedding (its 1,024-token embedding and output layer take a third of them) over 64-token chunks (about
    150 characters)."""
    bpe = tokenizer == "bpe"
    # the BPE model's smaller steps read the text about 28 times in the budget: without dropout its validation
    # loss stopped falling at step 4,000 of 14,777 (2.126 bits/char); `train`'s automatic dropout (0.25 above 8
    # passes) is for exactly that. The char model reads it about 11 times and was trained without.
    return LMArgs(data=[str(text)], out=str(run), cell="lstm", layers=1, hidden=320 if bpe else 512,
                  embed=192 if bpe else 64, dropout=None if bpe else 0.0, seq_len=64 if bpe else 128, batch_size=32,
                  lr=4e-3, time_budget=budget, seed=seed, threads=2, eval_every=500, tokenizer=tokenizer, quiet=True)


def build_fortunes(build: Path, budget: float, seed: int, tokenizer: str = "char") -> dict:
    text = F.english_lm_text(build / "fortunes-en.txt")
    name = "fortunes" if tokenizer == "char" else f"fortunes-{tokenizer}"
    run = build / "runs" / name
    args = fortunes_args(text, run, budget, seed, tokenizer)
    m = train_lm(args)
    art = REPO / "models" / name
    manifest = export(run, art, quantize="int8", force=True)
    # the fixed evaluation sample: the first 20,000 characters of the held-out entries (the same for both models)
    from .data import lm_corpus, read_documents
    _, val_text = lm_corpus(read_documents([text]), args.val_fraction, seed)
    sample = art / "eval_sample.txt"
    sample.write_text(val_text[:20000], encoding="utf-8")
    rec = {"data": sample.name, "float32": _eval(art, sample), "int8": _eval(art, sample, int8=True)}
    (art / "eval_sample.json").write_text(json.dumps(rec, indent=2) + "\n")
    return {"train": {k: m[k] for k in ("val_bpc", "val_ppl", "train_tokens", "seconds", "steps", "chars_per_token")
                      if k in m},
            "parity": manifest["parity"], "int8": manifest["int8"], "eval_sample": rec}


LANGID_BUDGET = 1080  # training seconds of the bundled identifier, and of each leave-one-domain-out run


def langid_args(data: Path, run: Path, budget: float, seed: int) -> ClassifierArgs:
    """The bundled identifier's architecture and training (the leave-one-domain-out runs use it too)."""
    # GRU: on the same data and 240 s, 94.9% on the mixed held-out against 93.7% for an LSTM of the same width
    # (more steps in the time: 2,150 against 1,819); 120 characters read, the longest training snippet
    return ClassifierArgs(data=str(data / "train.csv"), val_data=str(data / "val.csv"), out=str(run), cell="gru",
                          hidden=128, embed=48, dropout=0.2, layers=2, batch_size=64, lr=3e-3, time_budget=budget,
                          seed=seed, threads=2, max_len=120, eval_every=1000, quiet=True)


def _score(art: Path, data: Path) -> dict:
    """Accuracy on whole texts and on their first 30 characters, beside langid.py on the same texts."""
    from service.evaluate import evaluate
    out = {}
    for name, first in (("full", None), ("first30", 30)):
        r = evaluate(art, data, first_chars=first, compare_langid=True)
        out[name] = {k: r[k] for k in ("n", "accuracy", "macro_f1", "per_class", "confusion")}
        out[name]["langid_py"] = {k: r["langid_py"][k] for k in ("accuracy", "macro_f1", "per_class")}
    return out


def build_langid(build: Path, budget: float, seed: int) -> dict:
    """Eight languages from four domains (export/langid_data.py): fortunes, manual pages, documentation, word
    lists. Test texts of every domain come from units no training file saw."""
    data = build / "langid"
    report = L.build(data, L.DOMAINS, seed)
    # the fortunes' whole held-out entries, as measured since the first bundled model
    full = [(lang, L.flat(t)) for lang in L.LANGS
            for name, (t,) in L.units("fortunes", lang, random.Random(seed)).items()
            if L.split_name("fortunes", name, seed) == "test"]
    F.write_csv(data / "test_fortune_entries.csv", full)
    mixed = []
    for dom in L.DOMAINS:
        from service.labelled import read_labelled
        mixed += read_labelled(data / f"test_{dom}.csv").rows
    F.write_csv(data / "test_mixed.csv", mixed)
    run = build / "runs" / "langid"
    m = train_classifier(langid_args(data, run, budget, seed))
    art = REPO / "models" / "langid"
    manifest = export(run, art, quantize="int8", force=True)
    tests = {"mixed": data / "test_mixed.csv", "fortune_entries": data / "test_fortune_entries.csv",
             "everyday": REPO / "export" / "everyday_sentences.csv",
             **{dom: data / f"test_{dom}.csv" for dom in L.DOMAINS}}
    results = {name: _score(art, path) for name, path in tests.items()}
    results["fortune_entries_int8"] = {"accuracy": _eval(art, tests["fortune_entries"], int8=True)["accuracy"]}
    # the fixed evaluation sample: 10 test texts per language and domain, and 10 held-out fortune entries
    rows, rng = [], random.Random(seed)
    from service.labelled import read_labelled
    for path in [data / f"test_{dom}.csv" for dom in L.DOMAINS] + [tests["fortune_entries"]]:
        by_lang: dict[str, list] = {}
        for label, text in read_labelled(path).rows:
            by_lang.setdefault(label, []).append((label, text))
        for label in sorted(by_lang):
            rows += rng.sample(by_lang[label], min(10, len(by_lang[label])))
    F.write_csv(art / "eval_sample.csv", rows)
    rec = {"data": "eval_sample.csv", "float32": _eval(art, art / "eval_sample.csv")}
    (art / "eval_sample.json").write_text(json.dumps(rec, indent=2) + "\n")
    return {"data": report, "train": {k: m[k] for k in ("accuracy", "macro_f1", "n_val", "n_train", "seconds", "steps")},
            "parity": manifest["parity"], "int8": manifest["int8"], "onnx_bytes": manifest["onnx_bytes"],
            "results": results}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["fortunes", "fortunes-bpe", "langid"])
    ap.add_argument("--lm-budget", type=float, default=1200, help="seconds (default 1200)")
    ap.add_argument("--langid-budget", type=float, default=LANGID_BUDGET, help=f"seconds (default {LANGID_BUDGET})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build", default=str(REPO / "build"))
    a = ap.parse_args(argv)
    build = Path(a.build)
    build.mkdir(parents=True, exist_ok=True)
    report_path = build / "models-report.json"
    # models not rebuilt keep their entries: from this build's report, or the one in docs/
    known = report_path if report_path.exists() else REPO / "docs" / "models-report.json"
    report = json.loads(known.read_text()) if known.exists() else {}
    for name, fn, budget in (("fortunes", build_fortunes, a.lm_budget),
                             ("fortunes-bpe", lambda *x: build_fortunes(*x, tokenizer="bpe"), a.lm_budget),
                             ("langid", build_langid, a.langid_budget)):
        if a.only and a.only != name:
            continue
        t0 = time.time()
        report[name] = fn(build, budget, a.seed)
        report[name]["wall_seconds"] = round(time.time() - t0, 1)
        report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"{name}: done in {report[name]['wall_seconds']:.0f}s")
    shutil.copy(report_path, REPO / "docs" / "models-report.json")


if __name__ == "__main__":
    main()
