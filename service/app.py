"""Build the service from a Config and serve it: models, runtime, LitServer, routes, signals.

Start-up order: load every artifact (a bad one stops the start with a message naming it), open the
session store, build the runtime (engines) and the LitServer (its worker classifies), register the
routes, start the engines, serve. SIGTERM/SIGINT drain: every stream in flight ends with its final
event (finish_reason "shutdown"), sessions settle, then the process exits 0.
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
from pathlib import Path

from .artifact import Artifact, load_artifact, read_manifest
from .config import Config, engine_threads, resolve_models
from .litserve_adapter import ClassifyBatcher, check_litserve, make_server, run_server, stop_server, worker_ready
from .metrics import ServiceMetrics
from .middleware import EdgeMiddleware
from .routes import Routes
from .runtime import Runtime
from .sessions import dumpfile
from .sessions.memory import MemoryStore

log = logging.getLogger("rnnserve")


def load_models(config: Config) -> tuple[dict[str, Artifact], dict[str, Artifact]]:
    """(language models, classifiers) by name, each with its ONNX Runtime session."""
    threads = config.threads or None
    # several engine threads per model each run the session on their own core: one intra-op thread each
    lm_threads = config.threads or (1 if engine_threads(config) > 1 else None)
    lms, classifiers = {}, {}
    for name, path in resolve_models(config).items():
        m = read_manifest(path)
        art = load_artifact(path, name, int8=config.int8 and bool(m.get("int8")),
                            threads=lm_threads if m.get("kind") == "lm" else threads)
        (lms if art.kind == "lm" else classifiers)[name] = art
    return lms, classifiers


def build(config: Config):
    check_litserve()
    lms, classifiers = load_models(config)
    metrics = ServiceMetrics()
    store = MemoryStore(ttl=config.session_ttl, max_sessions=config.max_sessions,
                        max_bytes=int(config.session_memory_mb * (1 << 20)))
    runtime = Runtime(config, lms, classifiers, store, metrics)
    metrics.bind(runtime.engines, store)
    _inject_faults(runtime)
    batcher = ClassifyBatcher(config.classify_max_batch, config.classify_wait_ms / 1000,
                              on_batch=metrics.classify_batch.observe)
    server = make_server({n: str(a.path) for n, a in classifiers.items()}, config.threads, config.int8, batcher,
                         middlewares=[(EdgeMiddleware, {"config": config, "metrics": metrics})])
    Routes(runtime, batcher, ready=lambda: worker_ready(server)).register(server.app)
    return server, runtime


def _inject_faults(runtime: Runtime) -> None:
    """A testing aid: RNNSERVE_INJECT_FAULT_AT_STEP=N makes the Nth decode step of each model fail, as a
    broken model or runtime would."""
    fault_at = os.environ.get("RNNSERVE_INJECT_FAULT_AT_STEP")
    if not fault_at:
        return
    for group in runtime.by_model.values():
        calls, lock = {"n": 0}, threading.Lock()  # one count per model, shared by its engine threads

        def hook(calls=calls, lock=lock, n=int(fault_at)):
            with lock:
                calls["n"] += 1
                hit = calls["n"] == n
            if hit:
                raise RuntimeError(f"fault injected at step {n} (RNNSERVE_INJECT_FAULT_AT_STEP)")
        for engine in group:
            engine.fault_hook = hook


def _load_dump(runtime: Runtime, path: Path) -> None:
    if not path.exists():
        return
    shapes = {name: [(a.manifest["layers"], a.manifest["hidden"])] * (2 if a.is_lstm else 1)
              for name, a in runtime.lms.items()}
    try:
        n = dumpfile.load(runtime.store, path, shapes)
        log.info(json.dumps({"event": "sessions_loaded", "path": str(path), "sessions": n}))
    except Exception as e:  # a corrupt or foreign file is set aside, never a crash
        aside = path.with_name(path.name + f".bad-{int(time.time())}")
        path.rename(aside)
        log.error(json.dumps({"event": "sessions_file_rejected", "path": str(path), "moved_to": str(aside),
                              "error": f"{type(e).__name__}: {e}"}))


def _save_dump(runtime: Runtime, path: str) -> None:
    try:
        n = dumpfile.save(runtime.store, path)
        log.info(json.dumps({"event": "sessions_saved", "path": path, "sessions": n}))
    except OSError as e:
        log.error(json.dumps({"event": "sessions_save_failed", "error": str(e)}))


def _tune_interpreter() -> None:
    # The engine threads and the event loop share the GIL; with the default 5 ms switch interval every
    # socket write of the loop can wait 5 ms for the GIL while a step runs Python.
    sys.setswitchinterval(0.0001)
    # Every token makes a few short-lived objects, freed by reference counting; the cyclic collector's
    # default (a young-generation pass every 700 allocations, walking everything alive) then runs
    # hundreds of times a second for nothing. Freeze what start-up made and collect less often:
    # 64 streams, interleaved runs, 74.7/76.4/81.1k -> 83.9/83.1/84.5k tokens/s.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 50, 100)


def serve(config: Config) -> None:
    logging.basicConfig(level=config.log_level.upper(), format="%(message)s")
    server, runtime = build(config)  # a bad artifact or option stops here with a message naming it
    if config.sessions_file:
        _load_dump(runtime, Path(config.sessions_file))
    _tune_interpreter()
    runtime.start()
    stopping = threading.Event()
    main_pid = os.getpid()

    def drain():
        runtime.shutdown("shutdown")
        if config.sessions_file:
            _save_dump(runtime, config.sessions_file)

    def on_term(signum, frame):
        if os.getpid() != main_pid or stopping.is_set():  # a forked helper (LitServe's manager) inherits this
            return
        stopping.set()
        log.info(json.dumps({"event": "shutdown", "signal": signum}))

        def finish():
            drain()
            time.sleep(0.5)  # let the final events reach the clients
            stop_server(server)
        threading.Thread(target=finish, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info(json.dumps({"event": "start", "host": config.host, "port": config.port,
                         "language_models": list(runtime.lms), "classifiers": list(runtime.classifiers)}))
    code = 0
    try:
        run_server(server, config.host, config.port)
    except SystemExit as e:  # uvicorn exits this way when it cannot bind the port
        code = e.code if isinstance(e.code, int) else 1
    except Exception:  # os._exit below would swallow the traceback: log it first
        log.exception("server failed")
        code = 1
    finally:
        if not stopping.is_set():
            drain()
        log.info(json.dumps({"event": "stopped"}))
        logging.shutdown()
        # LitServe ends its worker processes but cannot stop a uvicorn *thread*; leave now.
        os._exit(code)
