"""Measure how the service holds up, and write docs/reliability.md (a separate, documented run; not CI).

    python -m loadtest.reliability [--soak-seconds 300] [--users 30]

1. overload: 10x the concurrent streams the queue allows -> 503 latency, admitted completions, /health.
2. disconnect storm: 200 clients that drop mid-stream -> active streams and memory afterwards.
3. soak: mixed locust load for --soak-seconds -> failures, p99, RSS at 1 minute and at the end,
   then sessions expiring as configured (TTL 30 s in this run).
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from .bench import REPO, Proc
from .clients import pct

SERVE = [sys.executable, "-m", "rnnserve", "serve", "--port", "{port}", "--host", "127.0.0.1"]


def active(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(next(l.split()[1] for l in text.splitlines() if l.startswith("rnnserve_active_streams ")))


def overload(max_batch: int = 16, max_queue: int = 16) -> dict:
    srv = Proc(SERVE, {"RNNSERVE_MAX_BATCH": str(max_batch), "RNNSERVE_MAX_QUEUE": str(max_queue),
                       "RNNSERVE_LOG_LEVEL": "warning"})
    n = 10 * (max_batch + max_queue)
    try:
        async def one(client, i):
            t0 = time.perf_counter()
            async with client.stream("POST", srv.url + "/generate", json={"max_tokens": 256, "seed": i}) as r:
                if r.status_code != 200:
                    await r.aread()
                    return r.status_code, time.perf_counter() - t0, r.headers.get("retry-after")
                ok = False
                async for line in r.aiter_lines():
                    ok = ok or ('"finish_reason"' in line)
                return (200 if ok else 599), time.perf_counter() - t0, None

        async def probe(client, stop, codes):
            while not stop.is_set():
                t = time.perf_counter()
                codes.append(((await client.get(srv.url + "/health")).status_code, time.perf_counter() - t))
                await asyncio.sleep(0.05)

        async def main():
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n + 10)) as client:
                stop, codes = asyncio.Event(), []
                task = asyncio.create_task(probe(client, stop, codes))
                res = await asyncio.gather(*(one(client, i) for i in range(n)))
                stop.set()
                await task
                return res, codes

        res, health = asyncio.run(main())
    finally:
        srv.stop()
    rej = [r[1] for r in res if r[0] == 503]
    return {"sent": n, "limit": max_batch + max_queue, "completed": sum(r[0] == 200 for r in res),
            "rejected_503": len(rej), "other": sum(r[0] not in (200, 503) for r in res),
            "retry_after_set": all(r[2] == "1" for r in res if r[0] == 503),
            "reject_ms_p50": 1000 * pct(rej, 50), "reject_ms_p99": 1000 * pct(rej, 99),
            "reject_ms_max": 1000 * max(rej), "health_checks": len(health),
            "health_ok": sum(c == 200 for c, _ in health), "health_ms_p99": 1000 * pct([t for _, t in health], 99)}


def reject_latency(n: int = 200) -> dict:
    """503 latency one request at a time while the server is saturated (16 streams running, 16 queued)."""
    srv = Proc(SERVE, {"RNNSERVE_MAX_BATCH": "16", "RNNSERVE_MAX_QUEUE": "16", "RNNSERVE_LOG_LEVEL": "warning"})
    try:
        async def hold(c, i):
            # 4,096 tokens take only a few seconds at this speed: a finished stream is replaced at once,
            # so the server stays full while the probes run
            while True:
                async with c.stream("POST", srv.url + "/generate", json={"max_tokens": 4096, "seed": i}) as r:
                    async for _ in r.aiter_lines():
                        pass

        async def main():
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as c:
                tasks = [asyncio.create_task(hold(c, i)) for i in range(32)]
                await asyncio.sleep(1.0)
                lat, codes = [], []
                async with httpx.AsyncClient(timeout=10) as c2:
                    for _ in range(n):
                        t = time.perf_counter()
                        r = await c2.post(srv.url + "/generate", json={"max_tokens": 5, "stream": False})
                        lat.append(time.perf_counter() - t)
                        codes.append(r.status_code)
                for t in tasks:
                    t.cancel()
                return lat, codes

        lat, codes = asyncio.run(main())
    finally:
        srv.stop()
    rej = [t for t, c in zip(lat, codes) if c == 503]  # the few probes that slip into a replaced slot are not 503s
    return {"probes": n, "status_503": len(rej), "ms_p50": 1000 * pct(rej, 50), "ms_p99": 1000 * pct(rej, 99),
            "ms_max": 1000 * max(rej)}


def storm(clients: int = 200) -> dict:
    srv = Proc(SERVE, {"RNNSERVE_LOG_LEVEL": "warning"})
    try:
        httpx.post(srv.url + "/generate", json={"max_tokens": 200, "stream": False})
        base_rss, base_active = srv.rss_mb(), active(srv.url)

        async def drop(client, i):
            async with client.stream("POST", srv.url + "/generate", json={"max_tokens": 4096, "seed": i}) as r:
                n = 0
                async for line in r.aiter_lines():
                    n += bool(line)
                    if n >= 3:
                        return True

        async def main():
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients + 10)) as c:
                return await asyncio.gather(*(drop(c, i) for i in range(clients)))

        t0 = time.perf_counter()
        asyncio.run(main())
        while active(srv.url) and time.perf_counter() - t0 < 30:
            time.sleep(0.05)
        settle = time.perf_counter() - t0
        after = {"active": active(srv.url), "rss_mb": srv.rss_mb()}
        ok = httpx.post(srv.url + "/generate", json={"max_tokens": 50, "stream": False}).status_code
        text = httpx.get(srv.url + "/metrics").text
        cancelled = next((float(l.split()[1]) for l in text.splitlines()
                          if l.startswith('rnnserve_request_finished_total{reason="cancelled"}')), 0.0)
    finally:
        srv.stop()
    return {"clients": clients, "cancelled": cancelled, "base_active": base_active, "base_rss_mb": base_rss,
            "after_active": after["active"], "after_rss_mb": after["rss_mb"], "seconds_to_idle": settle,
            "next_request_status": ok}


def soak(seconds: int, users: int, out: Path) -> dict:
    ttl = 30
    srv = Proc(SERVE, {"RNNSERVE_LOG_LEVEL": "warning", "RNNSERVE_SESSION_TTL": str(ttl)})
    samples = []
    stop = threading.Event()

    def sample():
        t0 = time.time()
        while not stop.is_set():
            samples.append((time.time() - t0, srv.rss_mb()))
            stop.wait(5)

    th = threading.Thread(target=sample, daemon=True)
    try:
        th.start()
        cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless",
               "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", srv.url, "--csv", str(out / "soak"),
               "--only-summary", "--stop-timeout", "10"]
        code = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).returncode
        stop.set()
        th.join()
        held_at_end = httpx.get(srv.url + "/info").json()["sessions"]["sessions"]
        time.sleep(ttl + 2)
        held_after_ttl = httpx.get(srv.url + "/info").json()["sessions"]
    finally:
        stop.set()
        srv.stop()
    rows = list(csv.DictReader(open(out / "soak_stats.csv")))
    agg = next(r for r in rows if r["Name"] == "Aggregated")
    rss_1m = next(r for t, r in samples if t >= 60) if seconds > 60 else samples[0][1]
    return {"seconds": seconds, "users": users, "locust_exit": code, "requests": int(agg["Request Count"]),
            "failures": int(agg["Failure Count"]), "p99_ms": float(agg["99%"]),
            "rss_1min_mb": rss_1m, "rss_end_mb": samples[-1][1], "rss_growth": samples[-1][1] / rss_1m - 1,
            "sessions_at_end": held_at_end, "sessions_after_ttl": held_after_ttl["sessions"],
            "expired": held_after_ttl["expired"], "ttl": ttl,
            "per_endpoint": {r["Name"]: {"requests": int(r["Request Count"]), "failures": int(r["Failure Count"]),
                                         "p99_ms": float(r["99%"])} for r in rows if r["Name"] != "Aggregated"}}


def expiry(ttl: int = 3, n: int = 20) -> dict:
    """Sessions left alone expire after the TTL (the soak's users delete theirs)."""
    srv = Proc(SERVE, {"RNNSERVE_LOG_LEVEL": "warning", "RNNSERVE_SESSION_TTL": str(ttl)})
    try:
        for i in range(n):
            sid = httpx.post(srv.url + "/sessions", json={}).json()["session_id"]
            httpx.post(srv.url + "/generate", json={"prompt": f"hi {i}", "max_tokens": 5, "stream": False,
                                                    "session_id": sid})
        held = httpx.get(srv.url + "/info").json()["sessions"]["sessions"]
        time.sleep(ttl + 1.5)
        after = httpx.get(srv.url + "/info").json()["sessions"]
        gone = httpx.post(srv.url + "/generate", json={"prompt": "", "session_id": sid, "stream": False}).status_code
    finally:
        srv.stop()
    return {"ttl": ttl, "created": n, "held": held, "after_ttl": after["sessions"], "expired": after["expired"],
            "expired_session_status": gone}


def write(res: dict, path: Path, cmd: str) -> None:
    o, s, k, x, q = res["overload"], res["storm"], res["soak"], res["expiry"], res["reject"]
    lines = ["# Reliability\n", f"Measured by `{cmd}` on this machine's 2 cores against a real server on 127.0.0.1 "
             "(bundled models). The same behaviours are asserted, with tolerant bounds, by tests/test_reliability.py "
             "in CI.\n",
             "## Overload\n",
             f"{o['sent']} concurrent streams against a limit of {o['limit']} (running + queued): {o['completed']} "
             f"completed, {o['rejected_503']} got 503 with `Retry-After: 1` ({'all' if o['retry_after_set'] else 'NOT all'}), "
             f"{o['other']} other; /health answered {o['health_ok']}/{o['health_checks']} probes with 200 during the "
             f"burst. Seen from the client that opened all {o['sent']} connections at once, the 503s took p50 "
             f"{o['reject_ms_p50']:.0f} ms, p99 {o['reject_ms_p99']:.0f} ms (max {o['reject_ms_max']:.0f} ms): that "
             "figure is dominated by the burst itself — one Python process opening hundreds of connections while the "
             "server's single event loop accepts and parses them all — not by the rejection.\n",
             f"Rejection latency proper, measured one request at a time against the saturated server (32 long "
             f"streams holding its 16 slots and 16 queue places, each replaced as soon as it ends): "
             f"{q['status_503']}/{q['probes']} answered 503 in p50 {q['ms_p50']:.1f} ms, "
             f"p99 {q['ms_p99']:.1f} ms, max {q['ms_max']:.1f} ms (target: within 100 ms).\n",
             "## Disconnect storm\n",
             f"{s['clients']} clients dropped their streams after the first events. Active streams before: "
             f"{s['base_active']:.0f}, after: {s['after_active']:.0f} (idle again {s['seconds_to_idle']:.2f} s after the "
             f"storm began); {s['cancelled']:.0f} requests counted as cancelled. Resident memory {s['base_rss_mb']:.0f} MB "
             f"before, {s['after_rss_mb']:.0f} MB after. The next request: HTTP {s['next_request_status']}.\n",
             "## Soak\n",
             f"{k['seconds']} s of mixed locust load ({k['users']} users: streaming and whole generation, classification, "
             f"multi-turn sessions, each conversation deleted at its end): {k['requests']:,} requests, {k['failures']} failures, aggregate p99 {k['p99_ms']:.0f} ms. "
             f"Resident memory {k['rss_1min_mb']:.0f} MB at 1 minute, {k['rss_end_mb']:.0f} MB at the end "
             f"({k['rss_growth']:+.1%}). Sessions held when the load stopped: {k['sessions_at_end']}.\n",
             "## Session expiry\n",
             f"{x['created']} sessions created and used, then left alone with a {x['ttl']} s TTL: {x['held']} held, "
             f"{x['after_ttl']} left after the TTL ({x['expired']} expired); using an expired id answers HTTP "
             f"{x['expired_session_status']}.\n",
             "| request | count | failures | p99 ms |", "|---|---|---|---|"]
    for name, r in k["per_endpoint"].items():
        lines.append(f"| {name} | {r['requests']:,} | {r['failures']} | {r['p99_ms']:.0f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--soak-seconds", type=int, default=300)
    ap.add_argument("--users", type=int, default=30)
    a = ap.parse_args(argv)
    out = REPO / "build" / "reliability"
    out.mkdir(parents=True, exist_ok=True)
    res = {"overload": overload(), "reject": reject_latency(), "storm": storm(), "expiry": expiry(), "soak": soak(a.soak_seconds, a.users, out)}
    (REPO / "docs" / "reliability.json").write_text(json.dumps(res, indent=2) + "\n")
    write(res, REPO / "docs" / "reliability.md",
          f"python -m loadtest.reliability --soak-seconds {a.soak_seconds} --users {a.users}")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != 'per_endpoint'} for k, v in res.items()}, indent=1))


if __name__ == "__main__":
    main()
