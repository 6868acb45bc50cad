"""How the language identifier holds up on text of a kind it never saw: `make langid-report`.

    python -m export.langid_report [--budget 420] [--out docs/langid-generalisation.json]

For each domain of export/langid_data.py: build the data from the other three, train the bundled model's
architecture for --budget seconds, and score it on the left-out domain's test texts — whole and cut to
their first 30 characters — beside langid.py (restricted to the same 8 languages) on the same texts.
About (4 x budget) seconds plus data and evaluation: 32 minutes with the default on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import langid_data as L
from .build_models import REPO, langid_args
from .onnx_export import export
from .train import train_classifier


def score(art: Path, data: Path) -> dict:
    from service.evaluate import evaluate
    out = {}
    for name, first in (("full", None), ("first30", 30)):
        r = evaluate(art, data, first_chars=first, compare_langid=True)
        out[name] = {"n": r["n"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                     "recall": {l: r["per_class"][l]["recall"] for l in r["labels"]},
                     "langid_py": {"accuracy": r["langid_py"]["accuracy"], "macro_f1": r["langid_py"]["macro_f1"],
                                   "recall": {l: r["langid_py"]["per_class"][l]["recall"] for l in r["labels"]}}}
    return out


def leave_one_out(build: Path, budget: float, seed: int) -> dict:
    results = {}
    for held in L.DOMAINS:
        t0 = time.time()
        rest = [d for d in L.DOMAINS if d != held]
        data = build / f"lodo-{held}"
        report = L.build(data, rest, seed, test_domains=[held])
        run = build / "runs" / f"lodo-{held}"
        m = train_classifier(langid_args(data, run, budget, seed))
        art = build / "artifacts" / f"lodo-{held}"
        export(run, art, force=True)
        results[held] = {"trained_on": rest, "train_rows": report["train"], "val_accuracy": m["accuracy"],
                         "test": score(art, data / f"test_{held}.csv"), "seconds": round(time.time() - t0)}
        print(held, json.dumps({k: (v["accuracy"], v["langid_py"]["accuracy"])
                                for k, v in results[held]["test"].items()}), flush=True)
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m export.langid_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=420, help="training seconds per left-out domain (default 420)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build", default=str(REPO / "build" / "langid-report"))
    ap.add_argument("--out", default=str(REPO / "docs" / "langid-generalisation.json"))
    a = ap.parse_args(argv)
    res = {"budget_s": a.budget, "leave_one_domain_out": leave_one_out(Path(a.build), a.budget, a.seed)}
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print("written", a.out)


if __name__ == "__main__":
    main()
