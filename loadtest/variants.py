"""float32 and int8 side by side, each against its own ceiling (a section of `rnnserve bench`, or alone):

    python -m loadtest.variants --runs 2 --out docs/variants.json

and the stream interval's effect (RNNSERVE_STREAM_INTERVAL: tokens/s against latency, one server per value):

    python -m loadtest.variants --intervals 0,auto,50 --runs 2

For each variant (RNNSERVE_INT8=0, RNNSERVE_INT8=1) and run, interleaved so the machine's drift falls on both:
the raw ceiling of the service's layout (two ONNX Runtime decode loops in parallel threads, one intra-op
thread each, 32 rows each: no server, no sampling), then a server of that variant: 64 streams of 256 tokens
(tokens/s, the server's CPU, TTFT p50/p99), one stream (TTFT p50/p99). Ratios are taken run by run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from loadtest.measure import REPO, Proc, measured, parallel_ceiling, serve_cmd, with_cpu

VARIANTS = {"float32": "0", "int8": "1"}


def one(variant: str, model: str, seconds: float, rounds: int) -> dict:
    artifact = REPO / "models" / model
    tps, cores = with_cpu(parallel_ceiling, artifact, 64, 2, seconds, variant == "int8")
    with tempfile.TemporaryDirectory() as state:
        srv = Proc(serve_cmd(),
                   {"RNNSERVE_LOG_LEVEL": "warning", "RNNSERVE_STATE_DIR": state, "RNNSERVE_INT8": VARIANTS[variant]})
        try:
            def stream(n, tokens, r):
                return measured(srv, "stream", "--url", srv.url, "--concurrency", str(n), "--tokens", str(tokens),
                                "--model", model, "--rounds", str(r))
            stream(64, 64, 1)  # warm-up
            s64 = stream(64, 256, rounds)
            s1 = stream(1, 64, 40)
        finally:
            srv.stop()
    return {"variant": variant, "ceiling_tokens_per_s": tps, "ceiling_cores": cores,
            "tokens_per_s": s64["tokens_per_s"], "of_ceiling": s64["tokens_per_s"] / tps,
            "server_cores": s64["server_cpu_cores"], "client_cores": s64["client_cpu_cores"],
            "tokens_per_core_s": s64["tokens_per_s"] / s64["server_cpu_cores"],
            "ceiling_tokens_per_core_s": tps / cores,
            "ttft64_p50": s64["ttft_p50"], "ttft64_p99": s64["ttft_p99"], "itl64_p50": s64["itl_p50"],
            "ttft1_p50": s1["ttft_p50"], "ttft1_p99": s1["ttft_p99"], "tokens_per_s_1": s1["tokens_per_s"]}


def run(runs: int = 2, model: str = "fortunes", seconds: float = 2.0, rounds: int = 6) -> dict:
    rows = [one(v, model, seconds, rounds) for _ in range(runs) for v in VARIANTS]
    med = {v: {k: statistics.median(r[k] for r in rows if r["variant"] == v)
               for k in rows[0] if k != "variant"} for v in VARIANTS}
    q = (json.loads((REPO / "models" / model / "model.json").read_text()).get("int8") or {}).get("quality")
    return {"model": model, "runs": rows, "median": med, "int8_quality": q}


ROWS = [("raw ceiling, 2 loops x 32 rows (tokens/s)", "ceiling_tokens_per_s", "{:,.0f}"),
        ("service, 64 streams (tokens/s)", "tokens_per_s", "{:,.0f}"),
        ("**service / its own ceiling**", "of_ceiling", "**{:.2f}**"),
        ("server CPU cores (client's)", ("server_cores", "client_cores"), "{:.2f} ({:.2f})"),
        ("tokens per server core-second (ceiling's)", ("tokens_per_core_s", "ceiling_tokens_per_core_s"),
         "{:,.0f} ({:,.0f})"),
        ("TTFT p50 / p99, 64 streams (ms)", ("ttft64_p50", "ttft64_p99"), "{:.1f} / {:.1f}"),
        ("inter-event p50, 64 streams (ms)", "itl64_p50", "{:.1f}"),
        ("TTFT p50 / p99, 1 stream (ms)", ("ttft1_p50", "ttft1_p99"), "{:.2f} / {:.2f}"),
        ("tokens/s, 1 stream", "tokens_per_s_1", "{:,.0f}")]


def table(r: dict) -> str:
    med = r["median"]
    lines = [f"| `{r['model']}` | float32 (`RNNSERVE_INT8=0`) | int8 (`RNNSERVE_INT8=1`) |", "|---|---|---|"]
    for label, key, fmt in ROWS:
        keys = key if isinstance(key, tuple) else (key,)
        ms = lambda k: 1000 if "ttft" in k or "itl" in k else 1  # noqa: E731  (seconds shown as ms)
        cell = lambda v: fmt.format(*(med[v][k] * ms(k) for k in keys))  # noqa: E731
        lines.append(f"| {label} | {cell('float32')} | {cell('int8')} |")
    q = r.get("int8_quality")
    if q:
        lines.append(f"| quality ({q['metric'].replace('_', ' ')}, {q['text']}) | {q['float32']} | "
                     f"{q['int8']} ({q['delta']:+.4f}) |")
    return "\n".join(lines) + "\n"


def interval_run(value: str, model: str, rounds: int, streams: int = 64) -> dict:
    with tempfile.TemporaryDirectory() as state:
        srv = Proc(serve_cmd(),
                   {"RNNSERVE_LOG_LEVEL": "warning", "RNNSERVE_STATE_DIR": state, "RNNSERVE_STREAM_INTERVAL": value})
        try:
            args = ["stream", "--url", srv.url, "--concurrency", str(streams), "--tokens", "256", "--model", model]
            measured(srv, *args, "--rounds", "1")  # warm-up
            s = measured(srv, *args, "--rounds", str(rounds))
        finally:
            srv.stop()
    return {"interval": value, "tokens_per_s": s["tokens_per_s"], "server_cores": s["server_cpu_cores"],
            "tokens_per_core_s": s["tokens_per_s"] / s["server_cpu_cores"], "tokens_per_event": s["tokens_per_event"],
            "ttft_p50": s["ttft_p50"], "ttft_p99": s["ttft_p99"], "itl_p50": s["itl_p50"], "itl_p99": s["itl_p99"]}


def intervals(values: list[str], runs: int, model: str, rounds: int) -> dict:
    rows = [interval_run(v, model, rounds) for _ in range(runs) for v in values]
    return {v: {k: statistics.median(r[k] for r in rows if r["interval"] == v) for k in rows[0] if k != "interval"}
            for v in values}


def interval_table(med: dict) -> str:
    lines = ["| RNNSERVE_STREAM_INTERVAL | tokens/s | tokens per server core-s | tokens per event | "
             "inter-event p50 / p99 (ms) | TTFT p50 / p99 (ms) |", "|---|---|---|---|---|---|"]
    for v, m in med.items():
        lines.append(f"| {v} | {m['tokens_per_s']:,.0f} | {m['tokens_per_core_s']:,.0f} | "
                     f"{m['tokens_per_event']:.1f} | "
                     f"{m['itl_p50'] * 1000:.1f} / {m['itl_p99'] * 1000:.1f} | "
                     f"{m['ttft_p50'] * 1000:.1f} / {m['ttft_p99'] * 1000:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--model", default="fortunes")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--intervals", help="instead: these RNNSERVE_STREAM_INTERVAL values at 64 streams, e.g. 0,auto,50")
    a = ap.parse_args(argv)
    if a.intervals:
        med = intervals(a.intervals.split(","), a.runs, a.model, a.rounds)
        if a.out:
            a.out.write_text(json.dumps(med, indent=2) + "\n")
        print(interval_table(med))
        return
    r = run(a.runs, a.model, rounds=a.rounds)
    if a.out:
        a.out.write_text(json.dumps(r, indent=2) + "\n")
    print(table(r))


if __name__ == "__main__":
    main()
