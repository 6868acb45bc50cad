"""What the workers of one server know of each other: a heartbeat file per worker in the run folder.

Every worker rewrites `RUN_DIR/workers/ID.json` every `BEAT` seconds (atomically) with its pid, health,
load and memory; any worker answering /health or /info reads them all. A worker is *up* when its file
is fresher than `STALE` seconds, says healthy and not draining, and its pid is alive. The supervisor
made the folder; it removes a dead worker's file before starting its replacement.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable

BEAT, STALE = 0.5, 3.0


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (a worker with LitServe's helper processes)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Board:
    def __init__(self, run_dir: str | Path, worker_id: int, workers: int):
        self.dir = Path(run_dir) / "workers"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.id, self.workers = worker_id, workers
        self._stop = threading.Event()

    def write(self, status: dict) -> None:
        status = {**status, "id": self.id, "pid": os.getpid(), "time": time.time()}
        tmp = self.dir / f".{self.id}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.dir / f"{self.id}.json")

    def read(self) -> list[dict]:
        """Every worker's last heartbeat (id order), with `up` decided as the module says."""
        now, out = time.time(), []
        for i in range(self.workers):
            try:
                s = json.loads((self.dir / f"{i}.json").read_text())
            except (OSError, ValueError):
                out.append({"id": i, "up": False, "why": "no heartbeat yet"})
                continue
            age = now - s.get("time", 0)
            why = ("heartbeat stale" if age > STALE else "not healthy" if not s.get("healthy") else
                   "draining" if s.get("draining") else "process gone" if not pid_alive(s.get("pid", -1)) else None)
            out.append({**s, "age_s": round(age, 2), "up": why is None, **({"why": why} if why else {})})
        return out

    def beat_forever(self, status: Callable[[], dict]) -> threading.Thread:
        """Write `status()` now and every BEAT seconds from a daemon thread, with the memory refreshed
        every few beats (walking /proc costs a few milliseconds)."""
        def loop():
            rss, n = 0.0, 0
            while not self._stop.is_set():
                if n % 8 == 0:
                    rss = rss_mb(os.getpid())
                try:
                    self.write({**status(), "rss_mb": round(rss, 1)})
                except Exception:  # noqa: BLE001 — a missed beat shows as stale, it must not kill the thread
                    pass
                n += 1
                self._stop.wait(BEAT)
        t = threading.Thread(target=loop, name="heartbeat", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()
