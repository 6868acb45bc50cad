"""Serving overhead, A against B: the same load on servers built from different source trees (a checkout of
an earlier commit, this one), runs interleaved so that the machine's drift falls on both alike.

    git worktree add /tmp/before be7b695
    python -m loadtest.overhead --tree before=/tmp/before --tree after=. --runs 3

For each tree and run: 64 streams of 256 tokens (12 rounds) -> tokens/s, the server's CPU cores and tokens per
server core-second, the client's cores, TTFT and inter-event p50/p99; one stream (40 requests of 64 tokens) ->
TTFT; 1,600 one-token requests from 8 clients -> the server's CPU per request; /classify with 64 clients for
5 s -> texts/s. Prints a markdown table of the medians and writes the runs as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from loadtest.measure import Proc, measured


def one_run(tree: Path, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as state:
        srv = Proc([sys.executable, "-m", "rnnserve", "serve", "--port", "{port}", "--host", "127.0.0.1"],
                   {"RNNSERVE_LOG_LEVEL": "warning", "RNNSERVE_STATE_DIR": state, **env}, cwd=tree)
        try:
            stream = lambda n, tokens, rounds: measured(srv, "stream", "--url", srv.url, "--concurrency", str(n),
                                                        "--tokens", str(tokens), "--model", "fortunes",
                                                        "--rounds", str(rounds))
            stream(64, 64, 1)  # warm-up
            s64 = stream(64, 256, 12)
            s1 = stream(1, 64, 40)
            req = stream(8, 1, 200)
            cls = measured(srv, "classify", "--url", srv.url, "--concurrency", "64", "--seconds", "5")
        finally:
            srv.stop()
    return {"tokens_per_s": s64["tokens_per_s"], "server_cores": s64["server_cpu_cores"],
            "tokens_per_core_s": s64["tokens_per_s"] / s64["server_cpu_cores"],
            "client_cores": s64["client_cpu_cores"], "ttft64_p50": s64["ttft_p50"], "ttft64_p99": s64["ttft_p99"],
            "itl64_p50": s64["itl_p50"], "itl64_p99": s64["itl_p99"], "tokens_per_event": s64["tokens_per_event"],
            "ttft1_p50": s1["ttft_p50"], "ttft1_p99": s1["ttft_p99"], "tokens_per_s_1": s1["tokens_per_s"],
            "cpu_ms_per_request": req["server_cpu_cores"] * req["seconds"] / max(1, req["requests"]) * 1000,
            "requests_per_s": req["requests"] / req["seconds"],
            "classify_texts_per_s": cls["texts_per_s"], "rss_mb": s64["server_rss_mb"]}


ROWS = [("tokens/s, 64 streams", "tokens_per_s", "{:,.0f}"), ("server CPU cores", "server_cores", "{:.2f}"),
        ("tokens per server core-second", "tokens_per_core_s", "{:,.0f}"), ("client CPU cores", "client_cores", "{:.2f}"),
        ("TTFT p50 / p99, 64 streams (ms)", ("ttft64_p50", "ttft64_p99"), "ms"),
        ("inter-event p50 / p99, 64 streams (ms)", ("itl64_p50", "itl64_p99"), "ms"),
        ("tokens per event", "tokens_per_event", "{:.1f}"),
        ("TTFT p50 / p99, 1 stream (ms)", ("ttft1_p50", "ttft1_p99"), "ms"),
        ("tokens/s, 1 stream", "tokens_per_s_1", "{:,.0f}"),
        ("server CPU per one-token request (ms)", "cpu_ms_per_request", "{:.2f}"),
        ("/classify texts/s, 64 clients", "classify_texts_per_s", "{:,.0f}"),
        ("server RSS peak (MB)", "rss_mb", "{:.0f}")]


def table(results: dict[str, list[dict]]) -> str:
    names = list(results)
    med = {n: {k: statistics.median(r[k] for r in runs if r.get(k) is not None)
               for k in runs[0] if any(r.get(k) is not None for r in runs)} for n, runs in results.items()}
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key, fmt in ROWS:
        cells = []
        for n in names:
            if fmt == "ms":
                cells.append(" / ".join(f"{med[n][k] * 1000:.1f}" for k in key))
            else:
                cells.append(fmt.format(med[n][key]) if key in med[n] else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    runs = len(next(iter(results.values())))
    return "\n".join(lines) + f"\n\nMedians of {runs} interleaved runs each.\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtest.overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=DIR[:KEY=VAL,...]",
                    help="a source tree to serve from, with environment settings for its server")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", help="write every run as JSON here")
    a = ap.parse_args(argv)
    trees = {}
    for spec in a.tree:
        name, _, rest = spec.partition("=")
        path, _, envs = rest.partition(":")
        trees[name] = (Path(path).resolve(), dict(kv.split("=", 1) for kv in envs.split(",") if kv))
    results: dict[str, list[dict]] = {n: [] for n in trees}
    for i in range(a.runs):
        for name, (path, env) in trees.items():
            r = one_run(path, env)
            results[name].append(r)
            print(f"run {i + 1} {name}: {r['tokens_per_s']:,.0f} tok/s, {r['tokens_per_core_s']:,.0f} per core-s, "
                  f"TTFT 64 p99 {r['ttft64_p99'] * 1000:.1f} ms", file=sys.stderr, flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
