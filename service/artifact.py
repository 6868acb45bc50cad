"""Load an exported artifact with onnxruntime and numpy alone (never torch).

An artifact folder holds model.onnx, tokenizer.json and model.json (the
manifest); docs/artifact.md is the format. `load_artifact` checks the format
version, the ONNX file's sha256 and that the graph's inputs and outputs are the
ones the manifest names, and raises ArtifactError naming the file and the
mismatch otherwise.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import tokenizer as T

SUPPORTED_FORMAT = 1
DEFAULT_MAX_CHARS = 400  # characters (tokens) of one window a classifier reads when its manifest does not say
READ_WINDOWS = 4         # a longer text is read in up to this many windows (service/classifier.py)
REQUIRED_KEYS = ("format_version", "kind", "cell", "layers", "hidden", "vocab_size", "bidirectional",
                 "inputs", "outputs", "pad_id", "unk_id", "onnx_sha256", "opset")
# The graph's input and output names by (kind, cell): the contract of docs/artifact.md, written once.
# The exporter names the graph's tensors from it; the loader checks every artifact against it.
EXPECTED_IO = {
    ("lm", "lstm"): (["tokens", "h0", "c0"], ["logits", "hn", "cn"]),
    ("lm", "gru"): (["tokens", "h0"], ["logits", "hn"]),
    ("classifier", "lstm"): (["tokens", "lengths"], ["logits"]),
    ("classifier", "gru"): (["tokens", "lengths"], ["logits"]),
}


def io_names(kind: str, cell: str) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of an artifact's graph: tokens then the state (h, and c for an LSTM) for a
    language model, tokens and lengths for a classifier."""
    inputs, outputs = EXPECTED_IO[(kind, cell)]
    return list(inputs), list(outputs)


class ArtifactError(Exception):
    """An artifact that cannot be served; the message names the file and the problem."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Artifact:
    name: str
    path: Path
    manifest: dict
    tokenizer: T.Tokenizer
    session: ort.InferenceSession
    onnx_file: str
    labels: list[str] = field(default_factory=list)
    session_sha256: str = ""  # of the ONNX file loaded
    variant_reason: str = ""  # why model.onnx or model.int8.onnx is served (choose_int8)

    tokenizer_sha256: str = ""

    def __post_init__(self):
        self._state_names = self.manifest["inputs"][1:]  # h0 (and c0), or lengths for a classifier

    @property
    def fingerprint(self) -> str:
        """Which weights and vocabulary these are: the ONNX file's sha256 (the one served: float32 or int8) and the
        tokenizer file's. A session's state is bound to it."""
        return f"{self.session_sha256}/{self.tokenizer_sha256}"

    def run(self, tokens: np.ndarray, state: list[np.ndarray] | None = None,
            lengths: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """One call of the graph: the one way every part of rnnserve runs a model.

        Language model: tokens int64 [batch, time] and the state carried in (h, and c for an LSTM, each
        float32 [layers, batch, hidden]; zeros when None) -> (logits [batch, time, vocab], state out).
        Classifier: tokens padded with pad_id and lengths int64 [batch] -> (logits [batch, classes], [])."""
        if self.kind == "classifier":
            return self.session.run(None, {"tokens": tokens, "lengths": lengths})[0], []
        if state is None:
            state = self.zero_state(tokens.shape[0])
        out = self.session.run(None, {"tokens": tokens, **dict(zip(self._state_names, state))})
        return out[0], out[1:]

    def zero_state(self, batch: int) -> list[np.ndarray]:
        """The state of `batch` fresh sequences: zeros, one (layers, batch, hidden) array per state tensor."""
        layers, hidden = self.state_shape_per_row
        return [np.zeros((layers, batch, hidden), np.float32) for _ in range(2 if self.is_lstm else 1)]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def is_lstm(self) -> bool:
        return self.manifest["cell"] == "lstm"

    @property
    def state_shape_per_row(self) -> tuple[int, int]:
        return self.manifest["layers"], self.manifest["hidden"]

    @property
    def state_bytes(self) -> int:
        """Bytes of recurrent state one sequence carries (h, and c for an LSTM), float32."""
        layers, hidden = self.state_shape_per_row
        return layers * hidden * 4 * (2 if self.is_lstm else 1)

    def info(self) -> dict:
        m = self.manifest
        clf = m["kind"] == "classifier"
        by_chars = self.tokenizer.type == "char"
        return {"name": self.name, "kind": m["kind"], "cell": m["cell"], "layers": m["layers"],
                "hidden": m["hidden"], "vocab_size": m["vocab_size"], "tokenizer": self.tokenizer.type,
                "labels": m.get("labels"), "onnx": self.onnx_file, "opset": m["opset"], "parity": m.get("parity"),
                "variant": "int8" if self.onnx_file == (m.get("int8") or {}).get("onnx") else "float32",
                "variant_reason": self.variant_reason or None,
                "int8": {k: v for k, v in m["int8"].items() if k != "onnx_sha256"} if m.get("int8") else None,
                "metrics": m.get("metrics"), "state_bytes": self.state_bytes if m["kind"] == "lm" else None,
                "max_chars": self.window if clf and by_chars else None,
                "read_chars": self.window * READ_WINDOWS if clf and by_chars else None,
                "max_tokens": self.window if clf and not by_chars else None,
                "read_tokens": self.window * READ_WINDOWS if clf and not by_chars else None}

    @property
    def window(self) -> int:
        """What a classifier reads at once, as it was trained: characters (the manifest's `max_chars`) with a
        `char` tokenizer, tokens (`max_tokens`) with any other."""
        key = "max_chars" if self.tokenizer.type == "char" else "max_tokens"
        return int(self.manifest.get(key) or DEFAULT_MAX_CHARS)


def read_manifest(folder: Path) -> dict:
    path = folder / "model.json"
    if not path.exists():
        raise ArtifactError(f"{path}: missing (is {folder} an exported artifact? see `rnnserve export`)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise ArtifactError(f"{path}: must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise ArtifactError(f"{path}: missing key(s) {', '.join(missing)}")
    if m["format_version"] != SUPPORTED_FORMAT:
        raise ArtifactError(f"{path}: format_version {m['format_version']!r} is not supported "
                            f"(this rnnserve reads version {SUPPORTED_FORMAT})")
    if (m["kind"], m["cell"]) not in EXPECTED_IO:
        raise ArtifactError(f"{path}: unknown kind/cell {m['kind']!r}/{m['cell']!r}")
    inputs, outputs = io_names(m["kind"], m["cell"])
    if m["inputs"] != inputs or m["outputs"] != outputs:
        raise ArtifactError(f"{path}: inputs/outputs {m['inputs']}/{m['outputs']} do not match the "
                            f"{m['kind']} {m['cell']} contract {inputs}/{outputs}")
    if m["kind"] == "classifier" and not (isinstance(m.get("labels"), list) and len(m["labels"]) >= 2):
        raise ArtifactError(f"{path}: a classifier needs 'labels', a list of at least two names")
    return m


def session_options(threads: int | None, arena: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # ORT's CPU arena keeps the peak of every shape it has seen, for good: fine for decode steps of similar
    # batches, ruinous for a classifier fed texts of any length (batches of 256 long texts: 914 MB kept,
    # 87 MB without; speed within 3%). Classifiers are loaded without it.
    so.enable_cpu_mem_arena = arena
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No spin-waiting between runs: several sessions (engines, the classify worker) share 2 cores,
    # and spinning threads would steal them from each other and from the HTTP loop.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


AUTO_INT8_MAX_DELTA = 0.01  # bits/char an int8 model may cost and still be served without being asked for


def choose_int8(m: dict, setting: bool | None) -> tuple[bool, str]:
    """Whether to serve an artifact's model.int8.onnx, and why: RNNSERVE_INT8=1 wherever there is one, 0 never;
    auto (None) where the manifest records it exact across batches (per-row quantisation) and costing at
    most AUTO_INT8_MAX_DELTA bits/char on held-out text."""
    q = m.get("int8")
    if setting is not None:
        return bool(setting and q), f"RNNSERVE_INT8={int(setting)}" + ("" if q or not setting else " (no int8 model)")
    if not q:
        return False, "auto: no int8 model"
    cost = q.get("quality") or {}
    if not q.get("batch_exact"):
        return False, "auto: int8 not exact across batches (rows share a quantisation scale)"
    if cost.get("metric") != "bits_per_char" or cost.get("delta") is None:
        return False, "auto: int8 quality cost not recorded"
    if cost["delta"] > AUTO_INT8_MAX_DELTA:
        return False, f"auto: int8 costs {cost['delta']:+.4f} bits/char (> {AUTO_INT8_MAX_DELTA})"
    return True, f"auto: exact across batches, {cost['delta']:+.4f} bits/char"


def load_artifact(folder: str | Path, name: str | None = None, int8: bool = False,
                  threads: int | None = None, arena: bool | None = None) -> Artifact:
    """Load and check an artifact. `arena` (ORT's CPU memory arena) defaults to on for a language model and
    off for a classifier (see session_options)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such artifact folder")
    m = read_manifest(folder)
    onnx_name, digest = m.get("onnx", "model.onnx"), m["onnx_sha256"]
    if int8:
        if not m.get("int8"):
            raise ArtifactError(f"{folder / 'model.json'}: no int8 model (export with --quantize int8)")
        onnx_name, digest = m["int8"]["onnx"], m["int8"]["onnx_sha256"]
    onnx_path = folder / onnx_name
    if not onnx_path.exists():
        raise ArtifactError(f"{onnx_path}: missing")
    actual = sha256_file(onnx_path)
    if actual != digest:
        raise ArtifactError(f"{onnx_path}: sha256 {actual[:12]}… does not match the manifest's "
                            f"{digest[:12]}… (file changed or corrupt)")
    try:
        if arena is None:
            arena = m["kind"] == "lm"
        sess = ort.InferenceSession(str(onnx_path), session_options(threads, arena), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ArtifactError(f"{onnx_path}: onnxruntime cannot load it ({e})") from None
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
    if got_in != m["inputs"] or got_out != m["outputs"]:
        raise ArtifactError(f"{onnx_path}: graph inputs/outputs {got_in}/{got_out} do not match "
                            f"model.json's {m['inputs']}/{m['outputs']}")
    tok_path = folder / m.get("tokenizer", "tokenizer.json")
    try:
        tok = T.load(tok_path, m["pad_id"], m["unk_id"])
    except T.TokenizerError as e:
        raise ArtifactError(str(e)) from None
    if m.get("tokenizer_type", "char") != tok.type:
        raise ArtifactError(f"{folder / 'tokenizer.json'}: a {tok.type!r} tokenizer, but model.json says "
                            f"tokenizer_type {m.get('tokenizer_type', 'char')!r}")
    if tok.vocab_size != m["vocab_size"]:
        raise ArtifactError(f"{folder / 'tokenizer.json'}: {tok.vocab_size} entries but model.json "
                            f"says vocab_size {m['vocab_size']}")
    return Artifact(name or folder.name, folder, m, tok, sess, onnx_name, list(m.get("labels") or []), digest,
                    sha256_file(tok_path))
