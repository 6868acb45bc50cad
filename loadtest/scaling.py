"""Scaling sections of `rnnserve bench`: worker processes on one host, and what a session turn costs in
each session store. Every figure of a section comes from the same run as its baseline.

    rnnserve bench                                   # everything, this machine's worker counts (1, 2)
    python -c "from loadtest import scaling; print(scaling.workers_section([1, 2, 4, 8], [64, 256], 256, 2,
               'fortunes', 2.0))"                    # a bigger machine: more workers, more streams
"""
from __future__ import annotations

import os
import sys
import tempfile

from loadtest.measure import REPO, Proc, client, fmt_ms, measured, parallel_ceiling, serve_cmd

if str(REPO) not in sys.path:  # deploy/ is the repository's, not the installed package's
    sys.path.insert(0, str(REPO))


def workers_section(worker_counts: list[int], levels: list[int], tokens: int, rounds: int, model: str,
                    seconds: float) -> dict:
    artifact = REPO / "models" / model
    out = {"cores": os.cpu_count(), "levels": levels, "runs": [], "ceiling": {}}
    loops = max(1, min(8, os.cpu_count() or 1))
    for b in levels:
        out["ceiling"][b] = {"loops": loops, "tokens_per_s": parallel_ceiling(artifact, b, loops, seconds)}
    for n in worker_counts:
        with tempfile.TemporaryDirectory() as state:
            srv = Proc(serve_cmd(), {"RNNSERVE_LOG_LEVEL": "warning", "RNNSERVE_WORKERS": str(n),
                                     "RNNSERVE_STATE_DIR": state})
            try:
                rss = srv.rss_mb()
                rows = [measured(srv, "stream", "--url", srv.url, "--concurrency", str(c), "--tokens", str(tokens),
                                 "--model", model, "--rounds", str(rounds)) for c in levels]
                out["runs"].append({"workers": n, "idle_rss_mb": rss, "streams": rows})
            finally:
                srv.stop()
    return out


def turn_costs(stores: dict[str, dict], seconds: float, concurrency: int = 8) -> dict:
    """Session turns (1 new token each) back to back with each store: latency p50/p99 and turns/s."""
    out = {}
    for name, env in stores.items():
        with tempfile.TemporaryDirectory() as state:
            srv = Proc(serve_cmd(), {"RNNSERVE_LOG_LEVEL": "warning", "RNNSERVE_STATE_DIR": state, **env})
            try:
                out[name] = measured(srv, "turns", "--url", srv.url, "--concurrency", str(concurrency),
                                     "--seconds", str(seconds), "--tokens", "1")
            finally:
                srv.stop()
    return out


def replicas_section(counts: list[int], concurrency: int, tokens: int, rounds: int, seconds: float) -> dict:
    """N replicas behind the real balancer with sessions in Redis (deploy/local/cluster.py): streams and session
    turns per second through the balancer."""
    from deploy.local.cluster import Cluster, free_port
    out = {"runs": []}
    for n in counts:
        c = Cluster(replicas=n, port=free_port(), env={"RNNSERVE_LOG_LEVEL": "warning"}).start()
        try:
            stream = client("stream", "--url", c.url, "--concurrency", str(concurrency), "--tokens", str(tokens),
                            "--rounds", str(rounds))
            turns = client("turns", "--url", c.url, "--concurrency", "8", "--seconds", str(seconds), "--tokens", "1")
            out["runs"].append({"replicas": n, "stream": stream, "turns": turns})
        finally:
            c.stop()
    return out


def with_redis(fn):
    """Run fn(redis_url) with a throwaway redis-server (no persistence) on a free loopback port."""
    from deploy.local.cluster import Cluster
    c = Cluster(replicas=0)
    c.start_redis()
    try:
        return fn(c.redis_url)
    finally:
        c.stop_redis()


def report_workers(w: dict, raw_two_loops: dict | None = None) -> list[str]:
    lines = ["## 6. Worker processes on one port\n",
             f"`rnnserve serve --workers N` on this machine's {w['cores']} cores (each worker: its own engines, ORT "
             "sessions and classifier; defaults otherwise). Ceiling: "
             f"{next(iter(w['ceiling'].values()))['loops']} raw ORT decode loops in parallel threads, one intra-op "
             "thread each, measured in the same run.\n",
             "| workers | streams | tokens/s | of the parallel-loop ceiling | TTFT p50 / p99 ms | server CPU cores | "
             "server RSS MB (idle) |", "|---|---|---|---|---|---|---|"]
    base = {row["concurrency"]: row["tokens_per_s"] for row in w["runs"][0]["streams"]}
    for run in w["runs"]:
        for row in run["streams"]:
            ceil = w["ceiling"][row["concurrency"]]["tokens_per_s"]
            lines.append(f"| {run['workers']} | {row['concurrency']} | {row['tokens_per_s']:,.0f} "
                         f"({row['tokens_per_s'] / base[row['concurrency']]:.2f}× 1 worker) | {row['tokens_per_s'] / ceil:.0%} "
                         f"({ceil:,.0f}) | {fmt_ms(row['ttft_p50'])} / {fmt_ms(row['ttft_p99'])} | "
                         f"{row['server_cpu_cores']:.2f} | {run['idle_rss_mb']:.0f} |")
    return lines + [""]


def report_turns(t: dict) -> list[str]:
    lines = ["## 7. What a session turn costs in each store\n",
             "8 conversations back to back, each turn one new token (`loadtest.clients turns`): the latency is "
             "claim + read state + prefill + one step + commit.\n",
             "| store | turns/s | p50 ms | p99 ms | failures |", "|---|---|---|---|---|"]
    for name, r in t.items():
        lines.append(f"| {name} | {r['turns_per_s']:,.0f} | {fmt_ms(r['p50'])} | {fmt_ms(r['p99'])} | {r['failures']} |")
    return lines + [""]


def report_replicas(r: dict) -> list[str]:
    lines = ["## 8. Replicas behind a balancer\n",
             "`deploy/local/cluster.py --replicas N`: N `rnnserve serve` replicas (defaults: one worker each on these 2 "
             "cores), sessions in one redis-server, HAProxy round robin in front; the clients talk to HAProxy. All on "
             "this machine's 2 cores, so more replicas share the same CPUs: this measures the cost of the layout, "
             "not the gain of more machines.\n",
             "| replicas | 64 streams tokens/s | TTFT p50 / p99 ms | session turns/s (8 conversations) | turn p50 / p99 ms |",
             "|---|---|---|---|---|"]
    for run in r["runs"]:
        st, tu = run["stream"], run["turns"]
        lines.append(f"| {run['replicas']} | {st['tokens_per_s']:,.0f} | {fmt_ms(st['ttft_p50'])} / {fmt_ms(st['ttft_p99'])} | "
                     f"{tu['turns_per_s']:,.0f} | {fmt_ms(tu['p50'])} / {fmt_ms(tu['p99'])} |")
    return lines + [""]
