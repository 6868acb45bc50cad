"""How the language identifier holds up on text of a kind it never saw: `make langid-report`.

    python -m export.langid_report [--budget 1080] [--domains D ...] [--train-seeds 0 1]
                                   [--out docs/langid-generalisation.json]

For each domain of export/langid_data.py: build the data from the other three, train the bundled model
exactly as `make models` does (architecture, data recipe, --budget seconds: the same 1,080 by default) once
per training seed, and score each run on the left-out domain's test texts — whole and cut to their first 30
characters — beside langid.py (restricted to the same 8 languages) on the same texts. A domain's figures are
the mean over its training seeds (each run is kept too): one seed moves a left-out domain by half a point,
as much as the margins measured (docs/models.md). About 4 x seeds x (budget + 100) seconds: 160 minutes with
the defaults on 2 cores.
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


def mean_test(runs: list[dict]) -> dict:
    """The mean of runs' `score`s on the same texts (langid.py's figures are the same in each)."""
    out = {}
    for name, head in runs[0].items():
        rs = [r[name] for r in runs]
        out[name] = {"n": head["n"], **{k: sum(r[k] for r in rs) / len(rs) for k in ("accuracy", "macro_f1")},
                     "recall": {l: sum(r["recall"][l] for r in rs) / len(rs) for l in head["recall"]},
                     "langid_py": head["langid_py"]}
    return out


def leave_one_out(build: Path, budget: float, seed: int, domains: list[str] | None = None,
                  train_seeds: tuple[int, ...] = (0,)) -> dict:
    """{left-out domain: {"trained_on", "train_rows", "runs": {training seed: {...}}}}: the data of `seed`,
    one run per training seed."""
    results = {}
    for held in domains or L.DOMAINS:
        rest = [d for d in L.DOMAINS if d != held]
        data = build / f"lodo-{held}"
        report = L.build(data, rest, seed, test_domains=[held])
        results[held] = {"trained_on": rest, "train_rows": report["train"], "runs": {}}
        for ts in train_seeds:
            t0 = time.time()
            run = build / "runs" / f"lodo-{held}-{ts}"
            m = train_classifier(langid_args(data, run, budget, ts))
            art = build / "artifacts" / f"lodo-{held}-{ts}"
            export(run, art, force=True)
            results[held]["runs"][str(ts)] = {"val_accuracy": m["accuracy"], "steps": m["steps"],
                                              "test": score(art, data / f"test_{held}.csv"),
                                              "seconds": round(time.time() - t0)}
            print(held, ts, json.dumps({k: (v["accuracy"], v["langid_py"]["accuracy"])
                                        for k, v in results[held]["runs"][str(ts)]["test"].items()}), flush=True)
    return results


def merge(old: dict, new: dict, seed: int) -> dict:
    """`new`'s runs over `old`'s, domain by domain and training seed by seed (the same data seed only), each
    domain's `test` the mean of its runs."""
    out = {}
    for d in L.DOMAINS:
        keep = old.get(d) if old.get(d, {}).get("data_seed") == seed else None
        if d not in new and keep is None:
            continue
        runs = {**(keep["runs"] if keep else {}), **(new[d]["runs"] if d in new else {})}
        base, seeds = new.get(d) or keep, sorted(runs, key=int)
        out[d] = {"trained_on": base["trained_on"], "train_rows": base["train_rows"], "data_seed": seed,
                  "training_seeds": seeds, "test": mean_test([runs[k]["test"] for k in seeds]), "runs": runs}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m export.langid_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=LANGID_BUDGET,
                    help=f"training seconds of each run (default {LANGID_BUDGET}, as the bundled model)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data (default 0, as `make models`)")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1], metavar="SEED",
                    help="training seeds per left-out domain (default 0 1); the report gives their mean")
    ap.add_argument("--build", default=str(REPO / "build" / "langid-report"),
                    help="where the data, runs and artifacts go (default build/langid-report)")
    ap.add_argument("--out", default=str(REPO / "docs" / "langid-generalisation.json"),
                    help="the report (default docs/langid-generalisation.json)")
    ap.add_argument("--domains", nargs="+", choices=L.DOMAINS, metavar="DOMAIN",
                    help="left-out domains to run (default: all four); runs already in --out for other domains "
                         "or other training seeds (same --seed and --budget) are kept")
    a = ap.parse_args(argv)
    out = Path(a.out)
    prev = json.loads(out.read_text()) if out.exists() else {}
    old = prev.get("leave_one_domain_out", {}) if prev.get("budget_s") == a.budget else {}
    new = leave_one_out(Path(a.build), a.budget, a.seed, a.domains, a.train_seeds)
    res = {"budget_s": a.budget, "leave_one_domain_out": merge(old, new, a.seed)}
    out.write_text(json.dumps(res, indent=2) + "\n")
    print("written", a.out)


if __name__ == "__main__":
    main()
