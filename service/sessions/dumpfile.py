"""The SIGTERM dump file of earlier versions (RNNSERVE_SESSIONS_FILE): sessions saved at a clean
shutdown as one .npz, loaded at the next start."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from . import SessionState
from .memory import MemoryStore

FORMAT = "rnnserve-sessions/1"


def save(store: MemoryStore, path: str | Path) -> int:
    """Write idle sessions with state to `path` atomically (temp file + rename)."""
    path = Path(path)
    arrays, meta = {}, []
    now = time.time()
    for i, (sid, model, state, idle) in enumerate(store.items()):
        for k, a in enumerate(state.arrays):
            arrays[f"s{i}_{k}"] = a
        meta.append({"id": sid, "model": model, "n": len(state.arrays), "last_token": state.next_token,
                     "tokens_seen": state.tokens_seen, "idle": idle, "saved": now})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, __meta__=np.frombuffer(json.dumps({"format": FORMAT, "sessions": meta}).encode(),
                                           dtype=np.uint8), **arrays)
    os.replace(tmp, path)
    return len(meta)


def load(store: MemoryStore, path: str | Path, state_shapes: dict[str, list[tuple]]) -> int:
    """Read sessions saved by `save`. Raises ValueError for a corrupt or foreign file."""
    path = Path(path)
    loaded = []
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not an rnnserve session file")
        for i, m in enumerate(meta["sessions"]):
            shapes = state_shapes.get(m["model"])
            arrays = [z[f"s{i}_{k}"] for k in range(m["n"])]
            if shapes is None or [a.shape for a in arrays] != shapes:
                continue  # a model no longer served, or a different shape: leave it out
            idle = time.time() - m["saved"] + m["idle"]
            if idle > store.ttl:
                continue
            loaded.append((m["id"], m["model"], SessionState([a.astype(np.float32) for a in arrays],
                                                             m["last_token"], m["tokens_seen"]), idle))
    for sid, model, state, idle in loaded:
        store.put(sid, model, state, idle)
    return len(loaded)
