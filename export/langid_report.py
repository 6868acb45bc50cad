"""How the language identifier holds up on text of a kind it never saw: `make langid-report`.

    python -m export.langid_report [--budget 1080] [--domains D ...] [--out docs/langid-generalisation.json]

For each domain of export/langid_data.py: build the data from the other three, train the bundled model
exactly as `make models` does (architecture, data recipe, --budget seconds: the same 1,080 by default), and
score it on the left-out domain's test texts — whole and cut to their first 30 characters — beside langid.py
(restricted to the same 8 languages) on the same texts. About 4 x (budget + 100) seconds: 79 minutes with
the default on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import langid_data as L
from .build_models import LANGID_BUDGET, REPO, langid_args
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


def leave_one_out(build: Path, budget: float, seed: int, domains: list[str] | None = None) -> dict:
    results = {}
    for held in domains or L.DOMAINS:
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
    ap.add_argument("--budget", type=float, default=LANGID_BUDGET,
                    help=f"training seconds per left-out domain (default {LANGID_BUDGET}, as the bundled model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build", default=str(REPO / "build" / "langid-report"))
    ap.add_argument("--out", default=str(REPO / "docs" / "langid-generalisation.json"))
    ap.add_argument("--domains", nargs="+", choices=L.DOMAINS, metavar="DOMAIN",
                    help="left-out domains to run (default: all four); the others keep their entry in --out")
    a = ap.parse_args(argv)
    out = Path(a.out)
    old = json.loads(out.read_text())["leave_one_domain_out"] if a.domains and out.exists() else {}
    new = leave_one_out(Path(a.build), a.budget, a.seed, a.domains)
    res = {"budget_s": a.budget, "leave_one_domain_out": {d: new.get(d) or old[d] for d in L.DOMAINS
                                                          if d in new or d in old}}
    out.write_text(json.dumps(res, indent=2) + "\n")
    print("written", a.out)


if __name__ == "__main__":
    main()
