"""What the benchmarks share: a server in its own process group with its CPU and memory read from /proc, the
load clients run in their own process, and the raw ONNX Runtime decode loop that is every ceiling.
`rnnserve bench` (loadtest/bench.py), its scaling sections (loadtest/scaling.py), the quality run and the
playground screenshot all start their servers and measure through here."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    import httpx
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {timeout}s")


class Proc:
    """A server in its own process group, with CPU and memory read from /proc for the whole tree."""

    def __init__(self, cmd: list[str], env: dict | None = None, health: str | None = None, cwd: Path = REPO):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        self.log = open(REPO / "build" / f"bench-{self.port}.log", "w") if (REPO / "build").is_dir() else \
            subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=cwd, start_new_session=True)
        wait_healthy(self.url, self.proc)

    def pids(self) -> list[int]:
        """The server and all its descendants (supervisor, workers, their helper processes)."""
        out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
        kids: dict[int, list[int]] = {}
        for pid, ppid in zip(out[::2], out[1::2]):
            kids.setdefault(int(ppid), []).append(int(pid))
        tree, todo = [], [self.proc.pid]
        while todo:
            p = todo.pop()
            tree.append(p)
            todo += kids.get(p, [])
        return tree

    def cpu_seconds(self) -> float:
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError):
                pass
        return total

    def rss_mb(self) -> float:
        from service.board import rss_mb
        return rss_mb(self.proc.pid)

    def worker_rss_mb(self) -> list[float]:
        """Each worker's resident memory (with its classifier process), as the server's /info reports it."""
        import httpx
        try:
            return httpx.get(self.url + "/info", timeout=10).json()["memory"]["rss_mb_per_worker"]
        except (httpx.HTTPError, KeyError, ValueError):
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def client(*args: str) -> dict | list:
    out = subprocess.run([sys.executable, "-m", "loadtest.clients", *args], capture_output=True, text=True, cwd=REPO,
                         timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def children_cpu() -> float:
    """CPU seconds of this process's finished children (the load clients: they share the machine's cores)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured(server: Proc, *args: str) -> dict:
    """Run a load client against `server`: its figures, plus the server's CPU cores used over the run (every
    process of its tree), its peak resident memory during the run (sampled every 0.25 s), each worker's
    RSS (from /info) at the end, and the CPU cores the client itself used."""
    peak, stop = [server.rss_mb()], threading.Event()

    def sample():
        while not stop.wait(0.25):
            peak.append(server.rss_mb())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    c0, t0, k0 = server.cpu_seconds(), time.perf_counter(), children_cpu()
    try:
        res = client(*args)
    finally:
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
    res.update(server_cpu_cores=(server.cpu_seconds() - c0) / wall, server_rss_mb=max(peak),
               worker_rss_mb=server.worker_rss_mb(), client_cpu_cores=(children_cpu() - k0) / wall)
    return res


def decode_speed(art, batch: int, seconds: float) -> float:
    """Seconds per decode step (time = 1) at this batch size, state carried."""
    state = art.zero_state(batch)
    tokens = np.random.default_rng(0).integers(2, art.tokenizer.vocab_size, size=(batch, 1))
    for _ in range(10):
        art.run(tokens, state)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _, state = art.run(tokens, state)
        steps += 1
    return (time.perf_counter() - t0) / steps


def with_cpu(fn, *args):
    """(fn(*args), the CPU cores this process used meanwhile: all its threads, ORT's pool included)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, (time.process_time() - c0) / (time.perf_counter() - t0)


def parallel_ceiling(artifact, batch: int, loops: int, seconds: float, int8: bool = False) -> float:
    """Tokens/s of `loops` raw ORT decode loops in parallel threads, each stepping batch/loops rows with one
    intra-op thread: what the hardware gives the service's layout, with no server and no sampling (with its
    CPU: `with_cpu(parallel_ceiling, ...)`)."""
    from service.artifact import load_artifact
    arts = [load_artifact(artifact, int8=int8, threads=1) for _ in range(loops)]
    speeds = [0.0] * loops
    rows = max(1, batch // loops)

    def one(k):
        speeds[k] = rows / decode_speed(arts[k], rows, seconds)
    threads = [threading.Thread(target=one, args=(k,)) for k in range(loops)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(speeds)


def serve_cmd() -> list[str]:
    return [sys.executable, "-m", "rnnserve", "serve", "--port", "{port}", "--host", "127.0.0.1"]




def fmt_ms(v):
    return "–" if v is None else f"{v * 1000:.1f}"
