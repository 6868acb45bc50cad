"""A real cluster on one machine: redis-server, N rnnserve replicas on their own ports, HAProxy in front.

    python deploy/local/cluster.py --replicas 2 --port 8080      # Ctrl-C (or SIGTERM) stops everything

Needs Debian's `redis-server` and `haproxy` (`apt-get install -y redis-server haproxy`). The balancer is
round-robin per request, checks each replica's /health every 500 ms (a draining replica answers 503 and
leaves the rotation within a second) and retries a request that met a refused connection or a 503 on
another replica, so a replica that stops never shows a client a failed request; `http-no-delay` sends
each streamed event at once (HAProxy otherwise holds small writes back to merge them). Redis runs without
persistence (`--save "" --appendonly no`), with `maxmemory` and `volatile-lru` as the session caps.
Everything listens on 127.0.0.1 unless --host says otherwise; the files (configs, logs, per-replica
state) go to --workdir (a temporary folder by default).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]

HAPROXY_CFG = """global
    maxconn 4000

defaults
    mode http
    option http-no-delay
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    timeout http-request 15s
    option http-buffer-request
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response 503

frontend rnnserve
    bind {host}:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server check inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2
{servers}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(exe: str) -> str:
    path = shutil.which(exe) or (f"/usr/sbin/{exe}" if os.path.exists(f"/usr/sbin/{exe}") else None)
    if path is None:
        raise SystemExit(f"{exe} is not installed: apt-get install -y redis-server haproxy")
    return path


def wait_for(check, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s")


class Cluster:
    def __init__(self, replicas: int = 2, port: int = 8080, host: str = "127.0.0.1", workdir: str | None = None,
                 env: dict | None = None, redis_maxmemory: str = "256mb"):
        self.n, self.port, self.host = replicas, port, host
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="rnnserve-cluster-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = {k: str(v) for k, v in (env or {}).items()}
        self.redis_port, self.maxmemory = free_port(), redis_maxmemory
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.replica_ports = [free_port() for _ in range(replicas)]
        self.url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
        self.redis: subprocess.Popen | None = None
        self.replicas: list[subprocess.Popen | None] = [None] * replicas
        self.haproxy: subprocess.Popen | None = None

    # -- the parts --------------------------------------------------------------------------------
    def start_redis(self) -> None:
        log = open(self.dir / "redis.log", "a")
        self.redis = subprocess.Popen([need("redis-server"), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                                       "--maxmemory", self.maxmemory, "--maxmemory-policy", "volatile-lru"],
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def pong():
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.3) as c:
                c.sendall(b"PING\r\n")
                return c.recv(16).startswith(b"+PONG")
        wait_for(pong, "redis-server")

    def stop_redis(self) -> None:
        _stop(self.redis, signal.SIGTERM)

    def start_replica(self, i: int, wait: bool = True) -> None:
        env = {**os.environ, "RNNSERVE_SESSIONS": self.redis_url, "RNNSERVE_HOST": "127.0.0.1",
               "RNNSERVE_PORT": str(self.replica_ports[i]), "RNNSERVE_REPLICA": f"replica-{i}",
               "RNNSERVE_STATE_DIR": str(self.dir / f"replica-{i}"), **self.env}
        log = open(self.dir / f"replica-{i}.log", "a")
        self.replicas[i] = subprocess.Popen([sys.executable, "-m", "rnnserve", "serve"], env=env, cwd=REPO,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_replica(i)

    def wait_replica(self, i: int) -> None:
        url = f"http://127.0.0.1:{self.replica_ports[i]}/health"

        def up():
            if self.replicas[i].poll() is not None:
                raise RuntimeError(f"replica {i} exited: {(self.dir / f'replica-{i}.log').read_text()[-2000:]}")
            return httpx.get(url, timeout=1).status_code == 200
        wait_for(up, f"replica {i}", 120)

    def kill_replica(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Signal the replica's whole process group (SIGKILL: supervisor, workers and helpers at once)."""
        p = self.replicas[i]
        if p is not None and p.poll() is None:
            os.killpg(p.pid, sig)

    def start_haproxy(self) -> None:
        servers = "\n".join(f"    server replica-{i} 127.0.0.1:{p}" for i, p in enumerate(self.replica_ports))
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(host=self.host, port=self.port, servers=servers))
        check = subprocess.run([need("haproxy"), "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects {cfg}: {check.stdout}{check.stderr}")
        log = open(self.dir / "haproxy.log", "a")
        self.haproxy = subprocess.Popen([need("haproxy"), "-db", "-f", str(cfg)], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        def up():
            if self.haproxy.poll() is not None:
                raise RuntimeError(f"haproxy exited: {(self.dir / 'haproxy.log').read_text()[-2000:]}")
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        wait_for(up, "haproxy")

    # -- the whole ------------------------------------------------------------------------------
    def start(self) -> "Cluster":
        try:
            self.start_redis()
            for i in range(self.n):
                self.start_replica(i, wait=False)
            for i in range(self.n):
                self.wait_replica(i)
            self.start_haproxy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """The balancer first, then the replicas (each drains: streams end with their final event), then Redis."""
        _stop(self.haproxy, signal.SIGTERM)
        for p in self.replicas:
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.replicas:
            _stop(p, None)
        self.stop_redis()


def _stop(p: subprocess.Popen | None, sig) -> None:
    if p is None or p.poll() is not None:
        return
    if sig is not None:
        p.send_signal(sig)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="deploy/local/cluster.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Each replica reads every RNNSERVE_* variable of this environment, e.g. "
                                        "RNNSERVE_WORKERS=2 for two worker processes per replica.")
    ap.add_argument("--replicas", type=int, default=2, help="rnnserve replicas (default 2)")
    ap.add_argument("--port", type=int, default=8080, help="the balancer's port (default 8080)")
    ap.add_argument("--host", default="127.0.0.1", help="the balancer's address (default 127.0.0.1)")
    ap.add_argument("--workdir", help="configs, logs and replica state (default: a new temporary folder)")
    a = ap.parse_args(argv)
    cluster = Cluster(a.replicas, a.port, a.host, a.workdir)
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster.start()
    print(f"rnnserve cluster: {cluster.url} -> {a.replicas} replicas "
          f"({', '.join(f'127.0.0.1:{p}' for p in cluster.replica_ports)}), sessions in {cluster.redis_url}; "
          f"files in {cluster.dir}. Ctrl-C stops it.", flush=True)
    try:
        while not stop["now"]:
            time.sleep(0.2)
    finally:
        print("stopping: balancer, replicas (draining), redis", flush=True)
        cluster.stop()


if __name__ == "__main__":
    main()
