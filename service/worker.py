"""One worker process, started by the supervisor: `python -m service.worker` with RNNSERVE_WORKER_SPEC.

The spec (JSON) holds the worker's id, the number of workers, the run folder and the Config. A worker
ends with its supervisor (PR_SET_PDEATHSIG), so killing the supervisor never leaves workers holding
the port.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

from .app import Worker, serve_worker
from .config import Config

PR_SET_PDEATHSIG = 1


def main() -> None:
    spec = json.loads(os.environ["RNNSERVE_WORKER_SPEC"])
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the supervisor died before the line above took effect
        sys.exit(1)
    serve_worker(Config(**spec["config"]), Worker(spec["id"], spec["workers"], spec["run_dir"]))


if __name__ == "__main__":
    main()
