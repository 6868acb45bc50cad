"""`rnnserve serve`: a supervisor process and N worker processes sharing one port.

Each worker is the whole service (its own engines, ONNX Runtime sessions, LitServe server and
classifier process) and binds the port with SO_REUSEPORT, so the kernel spreads connections over the
workers one by one. (A socket shared by forked workers was the alternative; asyncio accepts up to a
backlog's worth of connections per wake-up, so one worker would take whole bursts of streams while the
others idle: docs/benchmarks.md, workers.) The supervisor:

- checks what would make every worker fail before starting any: the port (a plain bind, so another
  server on it is an error, not a silent neighbour), the session store (opened once: its folder is
  writable, a corrupt file set aside), an old session dump to import, and `memory` with several workers;
- makes the run folder (heartbeats, prometheus-client's multiprocess files) and starts the workers;
- restarts a worker that dies, after releasing its session claims and reaping what it left behind;
  gives up (exit 1) when workers keep dying at start, instead of crash-looping;
- on SIGTERM/SIGINT asks every worker to drain (streams end with their final event, sessions settle)
  and exits 0 when they have.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .artifact import ArtifactError, read_manifest
from .board import Board, pid_alive
from .config import Config, resolve_models, session_url, workers as worker_count
from .sessions import SessionError, dumpfile, open_store

log = logging.getLogger("rnnserve")

FAST_FAIL_S, FAST_FAILS_ALLOWED, GRACE_S = 15.0, 3, 60.0
UNHEALTHY_RESTART_S = 10.0  # a worker that served and then stays unhealthy (a dead engine thread, a hang) this long
PR_SET_CHILD_SUBREAPER = 36


class StartError(Exception):
    """Something that stops the server before it starts; the message says what and how to fix it."""


def check_port(host: str, port: int) -> None:
    """A plain bind: fails when anything (another rnnserve too) already listens on the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise StartError(f"cannot listen on {host}:{port}: {e.strerror} (is another server running there? "
                             "choose another --port)") from None


def lm_shapes(config: Config) -> dict[str, tuple[list[tuple], int]]:
    """Each served language model's state shapes and vocabulary, from the manifests (no ONNX loaded)."""
    out = {}
    for name, path in resolve_models(config).items():
        m = read_manifest(Path(path))
        if m["kind"] == "lm":
            out[name] = ([(m["layers"], m["hidden"])] * (2 if m["cell"] == "lstm" else 1), m["vocab_size"])
    return out


def import_dump(store, config: Config) -> None:
    """Read an old SIGTERM dump (RNNSERVE_SESSIONS_FILE) into the store once, then retire the file."""
    path = Path(config.sessions_file)
    if not config.sessions_file or not path.exists():
        return
    try:
        loaded, left_out = dumpfile.load(store, path, lm_shapes(config))
        retired = path.with_name(path.name + f".imported-{int(time.time())}")
        log.info(json.dumps({"event": "sessions_imported", "path": str(path), "sessions": loaded,
                             "left_out": left_out, "moved_to": str(retired)}))
    except Exception as e:  # a corrupt or foreign file is set aside, never a crash
        retired = path.with_name(path.name + f".bad-{int(time.time())}")
        log.error(json.dumps({"event": "sessions_file_rejected", "path": str(path), "moved_to": str(retired),
                              "error": f"{type(e).__name__}: {e}"}))
    try:
        path.rename(retired)
    except OSError as e:
        log.error(json.dumps({"event": "sessions_file_not_retired", "path": str(path), "error": str(e)}))


def open_session_store(config: Config):
    c = config
    return open_store(session_url(c), ttl=c.session_ttl, max_sessions=c.max_sessions,
                      max_bytes=int(c.session_memory_mb * (1 << 20)), claim_seconds=c.session_claim_seconds)


class Supervisor:
    def __init__(self, config: Config):
        self.config = config
        self.n = worker_count(config)
        self.procs: dict[int, subprocess.Popen] = {}
        self.started: dict[int, float] = {}
        self.fast_fails = 0
        self.last_up: dict[int, float] = {}
        self._last_watch = 0.0
        self.stopping = False
        self.store = None
        self.run_dir = ""

    def prepare(self) -> None:
        c = self.config
        if session_url(c) == "memory" and self.n > 1:
            raise StartError(f"--sessions memory keeps sessions inside one process; with --workers {self.n} a "
                             "conversation could reach a worker that does not have it. Use the default "
                             "(sqlite:///…, shared by the workers) or redis://…, or --workers 1")
        check_port(c.host, c.port)
        lm_shapes(c)  # a missing or broken models folder stops here, before any worker starts
        if session_url(c) != "memory":
            try:
                self.store = open_session_store(c)
            except SessionError as e:
                raise StartError(e.message) from None
            import_dump(self.store, c)
            self._release_dead_holders()
        remove_dead_run_dirs()
        self.run_dir = tempfile.mkdtemp(prefix=f"rnnserve-run-{os.getpid()}-")
        os.mkdir(Path(self.run_dir) / "metrics")

    def _release_dead_holders(self) -> None:
        """Claims left by workers of an earlier run that died (kill -9, power cut) are released at once."""
        if not hasattr(self.store, "release_holder"):
            return
        from .sessions.sqlite import holder_alive
        for holder in self.store.holders():
            if not holder_alive(holder):
                n = self.store.release_holder(holder)
                log.info(json.dumps({"event": "claims_released", "holder": holder, "sessions": n}))

    def spawn(self, i: int) -> None:
        spec = {"id": i, "workers": self.n, "run_dir": self.run_dir, "config": asdict(self.config)}
        env = {**os.environ, "RNNSERVE_WORKER_SPEC": json.dumps(spec),
               "PROMETHEUS_MULTIPROC_DIR": str(Path(self.run_dir) / "metrics")}
        (Path(self.run_dir) / "workers" / f"{i}.json").unlink(missing_ok=True)
        self.procs[i] = subprocess.Popen([sys.executable, "-m", "service.worker"], env=env)
        self.started[i] = time.monotonic()

    def reap(self, i: int, proc: subprocess.Popen) -> None:
        """A worker died: count it, release its claims, kill what it left running, drop its live gauges."""
        code = proc.returncode
        log.error(json.dumps({"event": "worker_died", "worker": i, "pid": proc.pid, "exit": code}))
        fast = time.monotonic() - self.started[i] < FAST_FAIL_S
        self.fast_fails = self.fast_fails + 1 if fast else 0
        if self.store is not None and hasattr(self.store, "release_holder"):
            try:
                self._release_dead_holders()
            except SessionError as e:
                log.error(json.dumps({"event": "claims_not_released", "error": e.message}))
        _kill_orphans(set(p.pid for p in self.procs.values()))
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(proc.pid, str(Path(self.run_dir) / "metrics"))

    def run(self) -> int:
        self.prepare()
        _become_subreaper()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info(json.dumps({"event": "supervisor_start", "workers": self.n, "port": self.config.port,
                             "sessions": session_url(self.config)}))
        for i in range(self.n):
            self.spawn(i)
        try:
            while not self.stopping:
                time.sleep(0.2)
                for i, p in list(self.procs.items()):
                    if p.poll() is None or self.stopping:
                        continue
                    self.reap(i, p)
                    if self.fast_fails >= FAST_FAILS_ALLOWED:
                        log.error(json.dumps({"event": "giving_up", "why": f"workers died {self.fast_fails} times "
                                              f"within {FAST_FAIL_S:.0f} s of starting; see the log above"}))
                        self.stop()
                        return 1
                    self.spawn(i)
                self.watch_health()
            return self.wait()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def watch_health(self) -> None:
        """Restart a worker that has served before and has not been up for UNHEALTHY_RESTART_S: it asks it
        to drain and exit (SIGTERM); the loop above then starts its replacement. Whether it has served is
        its own heartbeat's word (`served`), so a worker that fails before this loop ever saw it up (this
        looks once a second) is restarted too."""
        now = time.monotonic()
        if now - self._last_watch < 1.0:
            return
        self._last_watch = now
        for w in Board(self.run_dir, -1, self.n).read():
            i, p = w["id"], self.procs.get(w["id"])
            if p is None or p.poll() is not None or w.get("pid") not in (None, p.pid):
                continue
            if w["up"]:
                self.last_up[i] = now
                continue
            if w.get("draining"):
                continue
            if w.get("served"):
                self.last_up.setdefault(i, now)  # down since at least now
            if i in self.last_up and now - self.last_up[i] > UNHEALTHY_RESTART_S:
                log.error(json.dumps({"event": "worker_unhealthy", "worker": i, "pid": p.pid, "why": w.get("why")}))
                del self.last_up[i]
                p.send_signal(signal.SIGTERM)

    def _on_signal(self, signum, frame) -> None:
        if not self.stopping:
            log.info(json.dumps({"event": "shutdown", "signal": signum}))
            self.stop()

    def stop(self) -> None:
        self.stopping = True
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Every worker drains and exits; one that does not within GRACE_S is killed (exit 1)."""
        deadline, code = time.monotonic() + GRACE_S, 0
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                code = 1
            code = code or (1 if p.returncode not in (0, -signal.SIGTERM) else 0)
        _kill_orphans(set())
        log.info(json.dumps({"event": "stopped", "exit": code}))
        return code


def _become_subreaper() -> None:
    """Orphans of a dead worker (LitServe's helper processes) become our children, so we can end them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def remove_dead_run_dirs(quiet_for: float = 60.0) -> None:
    """Run folders (heartbeats, metric files) of supervisors that were killed (-9, OOM) and could not remove
    their own: the folder's name carries its supervisor's pid, and nothing in it has changed for `quiet_for`
    seconds (live workers rewrite their heartbeat twice a second; the pid alone could belong to another pid
    namespace sharing this /tmp)."""
    now = time.time()
    for d in Path(tempfile.gettempdir()).glob("rnnserve-run-*-*"):
        pid = d.name.split("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        try:
            newest = max([d.stat().st_mtime] + [f.stat().st_mtime for f in d.rglob("*")])
        except OSError:
            continue
        if now - newest > quiet_for:
            shutil.rmtree(d, ignore_errors=True)


def _kill_orphans(keep: set[int]) -> None:
    """End our children that are not live workers: what dead workers left behind, re-parented to us."""
    me, killed = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in keep:
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            try:
                os.kill(int(d.name), signal.SIGKILL)
                killed.append(int(d.name))
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 2
    for pid in killed:  # reap them, so no zombie is left
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.01)


def serve(config: Config) -> None:
    """The `rnnserve serve` entry point: exits with the supervisor's code (2 for a start-up error)."""
    logging.basicConfig(level=config.log_level.upper(), format="%(message)s")
    try:
        code = Supervisor(config).run()
    except (StartError, ArtifactError) as e:
        log.error(json.dumps({"event": "start_failed", "error": str(e)}))
        print(f"rnnserve serve: error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)
