"""`rnnserve loadtest`: run the locust scenarios headless and keep the CSV and HTML reports.

Starts `rnnserve serve` on a free local port when no --host is given, and stops it afterwards.
Exits non-zero when any request failed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from .bench import REPO, Proc


def run(users: int, duration: str, host: str | None, out: Path, spawn_rate: float | None = None,
        env: dict | None = None, only: list[str] | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    server = None
    if host is None:
        server = Proc([sys.executable, "-m", "rnnserve", "serve", "--port", "{port}", "--host", "127.0.0.1"],
                      {"RNNSERVE_LOG_LEVEL": "warning", **(env or {})})
        host = server.url
    try:
        cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless",
               "-u", str(users), "-r", str(spawn_rate or max(1, users)), "-t", duration, "--host", host,
               "--csv", str(out / "locust"), "--html", str(out / "report.html"), "--only-summary",
               "--stop-timeout", "10", "--exit-code-on-error", "1", *(only or [])]
        print(f"locust: {users} users for {duration} against {host}; reports in {out}", flush=True)
        code = subprocess.run(cmd, cwd=REPO).returncode
        summary = server_summary(host)
        if server is not None:
            summary["server_rss_mb"] = round(server.rss_mb(), 1)
        (out / "server.json").write_text(json.dumps(summary, indent=2) + "\n")
        print("server: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
        return code
    finally:
        if server is not None:
            server.stop()


def server_summary(host: str) -> dict:
    """What the server says after the run: the prefix cache's hit rate, tokens saved and memory (/metrics
    sums every worker; /info is the answering worker's cache)."""
    try:
        text = httpx.get(host + "/metrics", timeout=10).text
        info = httpx.get(host + "/info", timeout=10).json()
    except httpx.HTTPError as e:
        return {"error": str(e)}
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("rnnserve_prefix_cache_") and not name.endswith("_created"):
            values[name] = float(value)
    hits, misses = values.get("rnnserve_prefix_cache_hits_total", 0), values.get("rnnserve_prefix_cache_misses_total", 0)
    cache = info.get("prefix_cache", {})
    return {"prefix_cache_hits": int(hits), "prefix_cache_misses": int(misses),
            "prefix_cache_hit_rate": round(hits / (hits + misses), 3) if hits + misses else None,
            "prefix_cache_tokens_saved": int(values.get("rnnserve_prefix_cache_tokens_saved_total", 0)),
            "prefix_cache_bytes": cache.get("bytes"), "prefix_cache_entries": cache.get("entries"),
            "prefix_cache_evicted": cache.get("evicted")}
