"""`rnnserve loadtest`: run the locust scenarios headless and keep the CSV and HTML reports.

Starts `rnnserve serve` on a free local port when no --host is given, and stops it afterwards.
Exits non-zero when any request failed.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .bench import REPO, Proc


def run(users: int, duration: str, host: str | None, out: Path, spawn_rate: float | None = None,
        env: dict | None = None) -> int:
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
               "--stop-timeout", "10", "--exit-code-on-error", "1"]
        print(f"locust: {users} users for {duration} against {host}; reports in {out}", flush=True)
        code = subprocess.run(cmd, cwd=REPO).returncode
        if server is not None:
            print(f"server RSS at the end: {server.rss_mb():.0f} MB")
        return code
    finally:
        if server is not None:
            server.stop()
