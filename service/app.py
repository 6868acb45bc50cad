"""One worker process: build the service from a Config and serve it on the shared port.

Start-up order: load every artifact (a bad one stops the start with a message naming it), open the
session store, build the runtime (engines) and the LitServer (its worker process classifies), register
the routes, start the engines and the heartbeat, serve. SIGTERM/SIGINT drain: /health turns 503 at once,
every stream in flight ends with its final event (finish_reason "shutdown"), sessions settle, the
process exits 0. The supervisor (supervisor.py) starts the workers; `python -m service.worker` is one.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

from .artifact import Artifact, choose_int8, load_artifact, read_manifest
from . import guards
from .board import Board
from .config import Config, classifier_threads, int8_setting, lm_threads, resolve_models, session_url
from .memory import MemoryTrimmer
from .litserve_adapter import (ClassifyBatcher, check_litserve, make_server, on_serving, run_server, stop_server,
                               worker_ready)
from .metrics import ServiceMetrics
from .middleware import EdgeMiddleware
from .routes import Routes
from .runtime import Runtime
from .sessions import open_store

log = logging.getLogger("rnnserve")


@dataclass
class Worker:
    id: int = 0
    workers: int = 1
    run_dir: str = ""


def load_models(config: Config) -> tuple[dict[str, Artifact], dict[str, Artifact]]:
    """(language models, classifiers) by name, each with its ONNX Runtime session."""
    lms, classifiers = {}, {}
    for name, path in resolve_models(config).items():
        m = read_manifest(path)
        lm = m.get("kind") == "lm"
        use, why = choose_int8(m, int8_setting(config))
        art = load_artifact(path, name, int8=use,
                            threads=lm_threads(config) if lm else classifier_threads(config))
        art.variant_reason = why
        (lms if lm else classifiers)[name] = art
    return lms, classifiers


def build(config: Config, worker: Worker):
    check_litserve()
    missing = guards.check_uvicorn()
    if missing:
        raise RuntimeError(f"the installed uvicorn lacks what service/guards.py relies on: {', '.join(missing)}")
    lms, classifiers = load_models(config)
    c = config
    store = open_store(session_url(c), ttl=c.session_ttl, max_sessions=c.max_sessions,
                       max_bytes=int(c.session_memory_mb * (1 << 20)), claim_seconds=c.session_claim_seconds)
    metrics = ServiceMetrics()
    runtime = Runtime(config, lms, classifiers, store, metrics)
    metrics.bind(runtime.engines, store, runtime.prefix_cache)
    _inject_faults(runtime)
    board = Board(worker.run_dir, worker.id, worker.workers)
    batcher = ClassifyBatcher(c.classify_max_batch, c.classify_wait_ms / 1000, c.classify_max_queue,
                              on_batch=metrics.classify_batch.observe)
    direct: dict = {}  # the generation endpoints, answered by the edge itself (middleware.py)
    server = make_server({n: str(a.path) for n, a in classifiers.items()}, classifier_threads(c), int8_setting(c),
                         batcher, middlewares=[(EdgeMiddleware, {"config": config, "metrics": metrics, "worker": worker.id,
                                                        "direct": direct})])
    routes = Routes(runtime, batcher, board, ready=lambda: worker_ready(server))
    routes.register(server.app)
    direct.update(routes.direct())
    return server, runtime, board, routes


class _InjectedDeath(BaseException):
    """What kills an engine thread in the tests: a BaseException, which a step's error handling lets through."""


def _inject_faults(runtime: Runtime) -> None:
    """Testing aids: RNNSERVE_INJECT_FAULT_AT_STEP=N makes the Nth decode step of each model fail, as a broken
    model or runtime would; RNNSERVE_INJECT_ENGINE_DEATH_AT_STEP=N kills the engine thread there instead."""
    for var, kind in (("RNNSERVE_INJECT_FAULT_AT_STEP", RuntimeError), ("RNNSERVE_INJECT_ENGINE_DEATH_AT_STEP",
                                                                         _InjectedDeath)):
        at = os.environ.get(var)
        if not at:
            continue
        for group in runtime.by_model.values():
            calls, lock = {"n": 0}, threading.Lock()  # one count per model, shared by its engine threads

            def hook(calls=calls, lock=lock, n=int(at), kind=kind, var=var):
                with lock:
                    calls["n"] += 1
                    hit = calls["n"] == n
                if hit:
                    raise kind(f"fault injected at step {n} ({var})")
            for engine in group:
                engine.fault_hook = hook


def _tune_interpreter() -> None:
    # The engine threads and the event loop share the GIL. Each step's ONNX Runtime call lets go of it, so
    # the loop gets its turns there; a short switch interval (0.1 ms, as here until 2026-12-04) added forced
    # hand-offs on top, each a wake-up and a context switch. Python's default, 5 ms, measured better on 2 cores
    # at 64 streams: 24-26k -> 28-30k tokens per server core-second, TTFT p99 68-85 -> 44-49 ms, 1 stream
    # TTFT p50 unchanged (docs/performance.md).
    sys.setswitchinterval(0.005)
    # Every token makes a few short-lived objects, freed by reference counting; the cyclic collector's
    # default (a young-generation pass every 700 allocations, walking everything alive) then runs
    # hundreds of times a second for nothing. Freeze what start-up made and collect less often:
    # 64 streams, interleaved runs, 74.7/76.4/81.1k -> 83.9/83.1/84.5k tokens/s.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 50, 100)


def serve_worker(config: Config, worker: Worker) -> None:
    logging.basicConfig(level=config.log_level.upper(), format="%(message)s")
    server, runtime, board, routes = build(config, worker)  # a bad artifact or option stops here, named
    _tune_interpreter()
    runtime.start()
    serving = threading.Event()
    on_serving(server, lambda loop: (runtime.attach(loop), serving.set()))
    trim = MemoryTrimmer()

    started = [False]

    def beat() -> dict:
        status = runtime.status()
        trim(busy=bool(status["active"] or status["queued"] or routes.batcher.in_flight))
        ready = serving.is_set() and worker_ready(server)
        # `served` (sticky): start-up is over, so being unhealthy from now on is a failure, not a slow start
        # (an engine may die between two beats, before any beat said healthy)
        started[0] = started[0] or ready
        return {**status, "healthy": ready and runtime.healthy(), "served": started[0]}
    board.beat_forever(beat)
    stopping = threading.Event()
    main_pid = os.getpid()

    def on_term(signum, frame):
        if os.getpid() != main_pid or stopping.is_set():  # a forked helper (LitServe's manager) inherits this
            return
        stopping.set()
        runtime.draining = True  # /health turns 503 now, here and (through the board) on every worker
        log.info(json.dumps({"event": "shutdown", "worker": worker.id, "signal": signum}))

        def finish():
            deadline = time.monotonic() + config.drain_seconds  # running streams may end on their own
            while runtime.busy() and time.monotonic() < deadline:
                time.sleep(0.05)
            runtime.shutdown("shutdown")  # the rest end now, with a final event
            time.sleep(0.5)  # let the final events reach the clients
            stop_server(server)
        threading.Thread(target=finish, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info(json.dumps({"event": "start", "worker": worker.id, "pid": main_pid, "host": config.host,
                         "port": config.port, "language_models": list(runtime.lms),
                         "classifiers": list(runtime.classifiers), "sessions": runtime.store.describe()}))
    code = 0
    try:
        run_server(server, config.host, config.port, reuse_port=True, send_buffer=config.send_buffer_kb << 10,
                   http=guards.protocol(config.header_timeout, config.max_connections, config.send_timeout),
                   timeout_keep_alive=config.keepalive_timeout)
    except SystemExit as e:  # uvicorn exits this way when it cannot bind the port
        code = e.code if isinstance(e.code, int) else 1
    except Exception:  # os._exit below would swallow the traceback: log it first
        log.exception("server failed")
        code = 1
    finally:
        if not stopping.is_set():
            runtime.shutdown("shutdown")
        board.stop()
        log.info(json.dumps({"event": "stopped", "worker": worker.id}))
        logging.shutdown()
        # LitServe ends its worker processes but cannot stop a uvicorn *thread*; leave now.
        os._exit(code)
