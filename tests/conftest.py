import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WORDS = ("the cat sat on a mat and a dog ran to the park while rain fell over old town "
         "bright stars shine at night so we sing quiet songs").split()


def make_text(n_lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize() + ".\n"
                   for _ in range(n_lines))


def make_fortunes(n: int = 120, seed: int = 0) -> str:
    rng = random.Random(seed)
    entries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))) + "\n" for _ in range(n)]
    return "%\n".join(entries)


def make_labelled(n: int = 200, seed: int = 0) -> str:
    """Two easily told apart classes: vowel-heavy vs consonant-heavy strings."""
    rng = random.Random(seed)
    rows = ["label,text"]
    for i in range(n):
        if i % 2:
            rows.append("soft," + "".join(rng.choice("aeiou ") for _ in range(rng.randint(5, 40))))
        else:
            rows.append("hard," + "".join(rng.choice("bcdfgkrst ") for _ in range(rng.randint(5, 40))))
    return "\n".join(rows) + "\n"


BLOCK_TORCH = """
import sys
class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _BlockTorch())
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    """Run Python code in a subprocess where importing torch raises."""
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code + "\nassert 'torch' not in sys.modules\n"],
                          capture_output=True, text=True, cwd=ROOT)


def rnnserve(*args, check=True, cwd=None, env=None, timeout=600):
    p = subprocess.run([sys.executable, "-m", "rnnserve", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"rnnserve {' '.join(map(str, args))} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "tiny.txt"
    p.write_text(make_text(), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def csv_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "tiny.csv"
    p.write_text(make_labelled(), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """A small trained language model (LSTM) and classifier (GRU), exported: tmp/models/{tinylm,tinyclf}."""
    root = tmp_path_factory.mktemp("arts")
    text = root / "text.txt"
    text.write_text(make_text(600, seed=1), encoding="utf-8")
    rnnserve("train", "lm", "--data", text, "--out", root / "run-lm", "--hidden", 48, "--embed", 16,
             "--seq-len", 32, "--batch-size", 16, "--steps", 150, "--lr", 1e-2, "--quiet", "--seed", 2)
    csv = root / "lab.csv"
    csv.write_text(make_labelled(300), encoding="utf-8")
    rnnserve("train", "classifier", "--data", csv, "--out", root / "run-clf", "--hidden", 16, "--embed", 8,
             "--epochs", 4, "--batch-size", 16, "--lr", 1e-2, "--cell", "gru", "--quiet")
    models = root / "models"
    # "wide": untrained but large enough (2 x 1024 LSTM) that a 4096-token stream lasts seconds,
    # for the tests that must catch a stream while it runs
    import torch
    from export.models import LanguageModel
    from service.tokenizer import load as load_tok
    from export.train import save_run, write_json
    torch.manual_seed(0)
    tok = load_tok(root / "run-lm" / "tokenizer.json")
    save_run(root / "run-wide", LanguageModel(tok.vocab_size, "lstm", 2, 1024, 16), tok, {})
    write_json(root / "run-wide" / "metrics.json", {"kind": "lm", "val_bpc": 0, "val_loss": 0})
    rnnserve("export", root / "run-wide", "--out", models / "wide")
    rnnserve("export", root / "run-lm", "--out", models / "tinylm")
    rnnserve("export", root / "run-clf", "--out", models / "tinyclf")
    return models


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def during_a_turn(url: str, sid: str, action, model: str = "wide", max_tokens: int = 300):
    """Run `action()` while a streamed turn holds session `sid` (after its first token: the claim is
    taken), then read the turn to its end. Returns (what `action` returned, the turn's final event)."""
    import json
    import httpx
    with httpx.stream("POST", url + "/generate", json={"prompt": "a", "max_tokens": max_tokens, "model": model,
                                                       "session_id": sid}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        lines = r.iter_lines()
        assert next(l for l in lines if l).startswith("data: ")
        result = action()
        rest = [l for l in lines if l]
    return result, json.loads(rest[-2][6:])


_SCRATCH: list[Path] = []


def _server_scratch() -> Path:
    """One temporary folder per test run for the servers' logs and state, never the checkout."""
    import tempfile
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="rnnserve-test-servers-")))
    return _SCRATCH[0]


class Server:
    def __init__(self, models, **env):
        import os
        self.port = int(env.pop("RNNSERVE_PORT", 0)) or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # each server its own state folder (its SQLite session store) unless the test shares one
        scratch = _server_scratch()
        state = scratch / f"state-{self.port}"
        e = {**os.environ, "RNNSERVE_MODELS": str(models), "RNNSERVE_PORT": str(self.port),
             "RNNSERVE_HOST": "127.0.0.1", "RNNSERVE_THREADS": "1", "RNNSERVE_STATE_DIR": str(state),
             **{k: str(v) for k, v in env.items()}}
        self.log = open(scratch / f"server-{self.port}.log", "a")
        # its own process group: a test can kill the whole server (supervisor, workers, their helpers)
        self.proc = subprocess.Popen([sys.executable, "-m", "rnnserve", "serve"], env=e, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        if not self.wait_healthy(60):
            self.stop()
            raise RuntimeError("server did not become healthy in 60 s: " + self.logs())

    def wait_healthy(self, seconds: float) -> bool:
        """Poll /health until it answers 200 (True) or `seconds` pass (False); the server exiting is an error."""
        import time
        import httpx
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.logs()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    def logs(self, tail: int | None = 3000) -> str:
        """The server's log: its last `tail` characters (for a failure message), or all of it."""
        self.log.flush()
        text = Path(self.log.name).read_text()
        return text[-tail:] if tail else text

    def kill(self):
        """kill -9 of the whole server: supervisor, workers and their helper processes at once."""
        import os
        import signal
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self, sig=None):
        import os
        import signal
        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def server(artifacts):
    s = Server(artifacts)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def bundled(tmp_path_factory):
    """A server of the bundled models (models/: fortunes, fortunes-bpe, langid), as `make serve` starts it."""
    s = Server(ROOT / "models", RNNSERVE_STATE_DIR=tmp_path_factory.mktemp("bundled"))
    yield s
    s.stop()


class RedisServer:
    """A real redis-server on a free loopback port, persistence off; stop() and start() it again to test outages."""

    def __init__(self, tmp):
        import shutil
        exe = shutil.which("redis-server")
        if exe is None:
            import os
            if os.environ.get("CI"):
                raise RuntimeError("redis-server is not installed (.ci/run installs Debian's redis-server)")
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.exe, self.dir, self.port = exe, tmp, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self):
        import time
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    r = RedisServer(tmp_path_factory.mktemp("redis"))
    yield r
    r.stop()
