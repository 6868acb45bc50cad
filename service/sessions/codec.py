"""A session's state as bytes: the form in which shared stores (SQLite, Redis) keep it.

    b"RNNS" | u32 header length | header (JSON, UTF-8) | the arrays, C order, little-endian

The header names the model, the state's version (the fencing number), the dtype and the shapes, the
pending token, the tokens fed so far and the fingerprint of the weights that computed the state, so a
value can be checked before it is trusted; `note`, when present, is the JSON text kept with the state (a
stored response's record, service/responses.py).
"""
from __future__ import annotations

import json
import struct

import numpy as np

from . import SessionState

MAGIC = b"RNNS"
FORMAT = 1


class CorruptState(ValueError):
    """Bytes that are not a session state this version can read."""


def encode(state: SessionState, model: str, version: int) -> bytes:
    arrays = [np.ascontiguousarray(a, dtype="<f4") for a in state.arrays]
    header = json.dumps({"format": FORMAT, "model": model, "version": version, "dtype": "float32",
                         "shapes": [list(a.shape) for a in arrays], "next_token": int(state.next_token),
                         "tokens_seen": int(state.tokens_seen), "artifact": state.artifact,
                         **({"note": state.note} if state.note else {}),
                         **({"context": [int(i) for i in state.context]} if state.context else {})},
                        separators=(",", ":"), ensure_ascii=False).encode()
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *(a.tobytes() for a in arrays)])


def encode_fresh(model: str) -> bytes:
    """A session created but not used yet: a header with no arrays (version 0)."""
    header = json.dumps({"format": FORMAT, "model": model, "version": 0, "dtype": "float32", "shapes": [],
                         "next_token": -1, "tokens_seen": 0, "fresh": True}, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(header)) + header


def decode(blob: bytes) -> tuple[SessionState | None, dict]:
    """(state, header), state None for a fresh session; CorruptState when the bytes do not hold what their
    header says."""
    try:
        if blob[:4] != MAGIC:
            raise CorruptState("not an rnnserve session state")
        (n,) = struct.unpack_from("<I", blob, 4)
        header = json.loads(blob[8:8 + n].decode())
        if header.get("format") != FORMAT or header.get("dtype") != "float32":
            raise CorruptState(f"unsupported state format {header.get('format')!r}/{header.get('dtype')!r}")
        arrays, offset = [], 8 + n
        for shape in header["shapes"]:
            count = int(np.prod(shape))
            a = np.frombuffer(blob, dtype="<f4", count=count, offset=offset).reshape(shape).astype(np.float32)
            arrays.append(a)
            offset += count * 4
        if offset != len(blob):
            raise CorruptState(f"{len(blob) - offset} bytes more than the header describes")
        if header.get("fresh"):
            return None, header
        return SessionState(arrays, int(header["next_token"]), int(header["tokens_seen"]),
                            str(header.get("artifact", "")), header.get("note"), header.get("context")), header
    except CorruptState:
        raise
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise CorruptState(f"unreadable session state ({e})") from None
