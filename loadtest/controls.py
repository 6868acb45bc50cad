"""What decoding controls and structured outputs cost at full batch: 64 streams of `fortunes` with plain
sampling, with penalties on every row, and with half the rows under a JSON schema, the three loads
interleaved (A B C A B C ...) on one server so that the machine's drift falls on all alike; and the time to
compile a typical schema for each bundled language model's vocabulary (cold: the grammar cache is bypassed).

    python -m loadtest.controls --runs 3 --out docs/controls.json

`rnnserve bench` runs the same section (`controls`) and reports it in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from loadtest.measure import REPO, Proc, measured

PENALTIES = {"frequency_penalty": 0.5, "presence_penalty": 0.3, "repetition_penalty": 1.1, "logit_bias": {"5": -2},
             "min_p": 0.02}
# a typical structured answer: an object with a bounded string, an integer range, an enum and a list
SCHEMA = {"type": "object", "properties": {
    "quote": {"type": "string", "maxLength": 160}, "author": {"type": "string", "maxLength": 40},
    "year": {"type": "integer", "minimum": 0, "maximum": 2100}, "mood": {"enum": ["funny", "wise", "sad"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
    "required": ["quote", "author", "year", "mood", "tags"], "additionalProperties": False}
LOADS = {"plain": (None, 1), "penalties, every row": (PENALTIES, 1),
         "JSON schema, half the rows": ({"response_format": {"type": "json_schema", "json_schema": {
             "name": "quote", "schema": SCHEMA}}}, 2)}


def compile_times(repeats: int = 20) -> dict:
    """Milliseconds to compile SCHEMA for each bundled LM's vocabulary (median of `repeats`, each from nothing)."""
    from service.constraints import Spec, Vocabulary
    from service.tokenizer import load
    out = {}
    for folder in sorted(p for p in (REPO / "models").iterdir() if (p / "model.json").exists()):
        if json.loads((folder / "model.json").read_text())["kind"] != "lm":
            continue
        tok = load(folder / "tokenizer.json")
        t0 = time.perf_counter()
        vocab = Vocabulary(tok)
        vocab.lltok
        setup = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            vocab._cache.clear()
            t0 = time.perf_counter()
            vocab.grammar(Spec("json_schema", SCHEMA, "schema"))
            times.append(time.perf_counter() - t0)
        out[folder.name] = {"vocab_size": tok.vocab_size, "compile_ms_median": statistics.median(times) * 1e3,
                            "compile_ms_max": max(times) * 1e3, "vocabulary_setup_ms": setup * 1e3}
    return out


def run(runs: int = 3, streams: int = 64, tokens: int = 256, rounds: int = 4, model: str = "fortunes") -> dict:
    res: dict = {"streams": streams, "tokens": tokens, "rounds": rounds, "model": model, "runs": {k: [] for k in LOADS}}
    with tempfile.TemporaryDirectory() as state:
        srv = Proc([sys.executable, "-m", "rnnserve", "serve", "--port", "{port}", "--host", "127.0.0.1"],
                   {"RNNSERVE_LOG_LEVEL": "warning", "RNNSERVE_STATE_DIR": state})
        try:
            measured(srv, "stream", "--url", srv.url, "--concurrency", str(streams), "--tokens", "32",
                     "--model", model)  # warm-up
            for _ in range(runs):
                for name, (extra, every) in LOADS.items():
                    args = ["--extra", json.dumps(extra), "--extra-every", str(every)] if extra else []
                    r = measured(srv, "stream", "--url", srv.url, "--concurrency", str(streams), "--tokens",
                                 str(tokens), "--model", model, "--rounds", str(rounds), *args)
                    res["runs"][name].append(r)
        finally:
            srv.stop()
    plain = [r["tokens_per_s"] for r in res["runs"]["plain"]]
    res["summary"] = {name: {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
        "vs_plain": statistics.median(r["tokens_per_s"] / p for r, p in zip(rs, plain)),
        "server_cores": statistics.median(r["server_cpu_cores"] for r in rs),
        "tokens_per_core_s": statistics.median(r["tokens_per_s"] / r["server_cpu_cores"] for r in rs),
        "ttft_p99_ms": statistics.median(r["ttft_p99"] * 1e3 for r in rs),
        "failures": sum(r["failures"] for r in rs)} for name, rs in res["runs"].items()}
    res["compile"] = compile_times()
    return res


def report(res: dict) -> str:
    lines = [f"{res['streams']} streams of `{res['model']}`, {res['tokens']} tokens each, {res['rounds']} rounds per "
             "load, loads interleaved; medians of the runs (ratios run by run)", "",
             "| load | tokens/s | vs plain | server cores | tokens per server core-s | TTFT p99 | failures |",
             "|---|---|---|---|---|---|---|"]
    for name, s in res["summary"].items():
        lines.append(f"| {name} | {s['tokens_per_s']:,.0f} | {s['vs_plain']:.2f} | {s['server_cores']:.2f} | "
                     f"{s['tokens_per_core_s']:,.0f} | {s['ttft_p99_ms']:.1f} ms | {s['failures']} |")
    lines += ["", "| model | vocabulary | compile a typical schema (median) | max | vocabulary set-up, once |",
              "|---|---|---|---|---|"]
    for name, c in res["compile"].items():
        lines.append(f"| {name} | {c['vocab_size']:,} | {c['compile_ms_median']:.2f} ms | {c['compile_ms_max']:.2f} ms"
                     f" | {c['vocabulary_setup_ms']:.1f} ms |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtest.controls")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", help="write the runs as JSON here")
    a = ap.parse_args(argv)
    res = run(a.runs, rounds=a.rounds)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(report(res))


if __name__ == "__main__":
    main()
