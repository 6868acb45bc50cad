"""The SIGTERM dump file of earlier versions (RNNSERVE_SESSIONS_FILE): read once into the store at
start, then retired (renamed `*.imported-TIME`). Nothing writes this format any more; `save` stays for
the tests that make an old file.

Every field is checked before it is trusted: a model no longer served or of another shape, a pending
token outside the vocabulary, a non-finite state, an age that is negative, in the future or past the
TTL — each such entry is left out (and counted), never loaded into a batch.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from . import SessionState

FORMAT = "rnnserve-sessions/1"


def save(entries: list[tuple[str, str, SessionState, float]], path: str | Path) -> int:
    """Write (id, model, state, idle seconds) entries in the old format (for tests of the import)."""
    arrays, meta = {}, []
    now = time.time()
    for i, (sid, model, state, idle) in enumerate(entries):
        for k, a in enumerate(state.arrays):
            arrays[f"s{i}_{k}"] = a
        meta.append({"id": sid, "model": model, "n": len(state.arrays), "last_token": state.next_token,
                     "tokens_seen": state.tokens_seen, "idle": idle, "saved": now})
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.frombuffer(json.dumps({"format": FORMAT, "sessions": meta}).encode(),
                                           dtype=np.uint8), **arrays)
    return len(meta)


def _valid(m: dict, z, i: int, models: dict, ttl: float, now: float):
    """(id, model, state, idle) of entry i, or None when any field is out of place."""
    sid, model = m.get("id"), m.get("model")
    if not (isinstance(sid, str) and 0 < len(sid) <= 128 and isinstance(model, str) and model in models):
        return None
    shapes, vocab = models[model]
    n, tok, seen = m.get("n"), m.get("last_token"), m.get("tokens_seen", 0)
    if n != len(shapes) or type(tok) is not int or not 0 <= tok < vocab or type(seen) is not int or seen < 0:
        return None
    saved, idle = m.get("saved"), m.get("idle")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (saved, idle)):
        return None
    if saved > now or idle < 0:
        return None  # a time in the future would make the session outlive its TTL
    age = now - saved + idle
    if age > ttl:
        return None
    arrays = [z[f"s{i}_{k}"] for k in range(n)]
    if [a.shape for a in arrays] != list(shapes) or not all(np.isfinite(a).all() for a in arrays):
        return None
    return sid, model, SessionState([a.astype(np.float32) for a in arrays], tok, seen), age


def load(store, path: str | Path, models: dict[str, tuple[list[tuple], int]]) -> tuple[int, int]:
    """Import the sessions of an old dump into `store` (anything with `put` and `ttl`): (loaded, left out).
    `models` maps each served language model to (state shapes, vocabulary size). Raises ValueError for a
    corrupt or foreign file."""
    now = time.time()
    with np.load(Path(path), allow_pickle=False) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("sessions"), list):
            raise ValueError(f"{path}: not an rnnserve session file")
        entries = [_valid(m, z, i, models, store.ttl, now) if isinstance(m, dict) else None
                   for i, m in enumerate(meta["sessions"])]
    good = sorted((e for e in entries if e is not None), key=lambda e: -e[3])  # oldest first: caps keep the newest
    for sid, model, state, idle in good:
        store.put(sid, model, state, idle)
    return len(good), len(entries) - len(good)
