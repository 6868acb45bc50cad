"""CPU cores each thread of a process used over a few seconds, from /proc (Linux): where a server's CPU goes
while a load runs (docs/performance.md's budget per token).

    python -m loadtest.threads PID [SECONDS]
"""
from __future__ import annotations

import os
import sys
import time


def snapshot(pid: int) -> dict[str, tuple[str, int, int]]:
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            name = open(f"/proc/{pid}/task/{t}/comm").read().strip()
            fields = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
            out[t] = (name, int(fields[11]), int(fields[12]))  # utime, stime in clock ticks
        except OSError:  # a thread that ended meanwhile
            pass
    return out


def cores(pid: int, seconds: float) -> list[dict]:
    a = snapshot(pid)
    time.sleep(seconds)
    b = snapshot(pid)
    hz = os.sysconf("SC_CLK_TCK")
    rows = []
    for t, (name, u, s) in b.items():
        if t in a:
            user, system = (u - a[t][1]) / hz / seconds, (s - a[t][2]) / hz / seconds
            if user + system > 0.005:
                rows.append({"tid": int(t), "name": name, "cores": user + system, "user": user, "system": system})
    return sorted(rows, key=lambda r: -r["cores"])


if __name__ == "__main__":
    rows = cores(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 10.0)
    for r in rows:
        print(f"{r['name']:24s} {r['tid']:>7} {r['cores']:.3f} cores (user {r['user']:.3f}, system {r['system']:.3f})")
    print(f"total {sum(r['cores'] for r in rows):.3f} cores")
