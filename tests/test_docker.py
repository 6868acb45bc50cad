"""The Docker image, proven without a Docker engine: lint the Dockerfile, then replay its runtime
step by step (a fresh virtual environment, exactly its COPY/RUN/ENV/CMD) and serve from it."""
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port


def test_hadolint_passes():
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    p = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def parse_dockerfile(path: Path) -> list[dict]:
    """Stages with their instructions, continuation lines joined."""
    text = path.read_text().replace("\\\n", " ")
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            stages.append({"from": rest, "steps": []})
        else:
            stages[-1]["steps"].append((op, rest.strip()))
    return stages


def env_pairs(rest: str) -> dict:
    return dict(tok.split("=", 1) for tok in shlex.split(rest))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """Replay the Dockerfile into tmp/: /opt/venv -> tmp/venv, /src -> tmp/src, /app -> tmp/app."""
    root = tmp_path_factory.mktemp("image")
    paths = {"/opt/venv": str(root / "venv"), "/src": str(root / "src"), "/app": str(root / "app"),
             "/var/lib/rnnserve": str(root / "state")}

    def m(s: str) -> str:
        for k, v in paths.items():
            s = s.replace(k, v)
        return s

    build, final = parse_dockerfile(ROOT / "Dockerfile")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.environ["PATH"].replace(str(Path(sys.executable).parent) + ":", "")
    for stage in (build, final):
        workdir = root
        for op, rest in stage["steps"]:
            if op == "ENV":
                for k, v in env_pairs(rest).items():
                    env[k] = m(v.replace("$PATH", env["PATH"]))
            elif op == "WORKDIR":
                workdir = Path(m(rest))
                workdir.mkdir(parents=True, exist_ok=True)
            elif op == "COPY":
                args = [a for a in rest.split() if not a.startswith("--")]
                if "--from=build" in rest:
                    continue  # the same venv, already built in place
                *srcs, dst = args
                for src in srcs:
                    target = Path(m(dst)) if dst.startswith("/") else workdir / dst
                    if (ROOT / src).is_dir():
                        shutil.copytree(ROOT / src, target if not dst.endswith("/") else target / src,
                                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                    else:
                        t = target / Path(src).name if dst.endswith("/") or target.is_dir() else target
                        t.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(ROOT / src, t)
            elif op == "RUN" and stage is build:
                cmd = m(rest)
                p = subprocess.run(["bash", "-c", cmd], cwd=workdir, env=env, capture_output=True, text=True,
                                   timeout=900)
                assert p.returncode == 0, f"RUN {cmd}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
            elif op == "RUN":
                pass  # useradd and the state folder: the user is not replayed here
            elif op == "CMD":
                cmd = json.loads(rest)
            elif op == "EXPOSE":
                port = rest
    return {"root": root, "env": env, "cmd": cmd, "workdir": workdir, "expose": port}


def test_runtime_has_no_torch_and_a_small_footprint(image):
    py = image["root"] / "venv" / "bin" / "python"
    p = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, env=image["env"])
    assert p.returncode != 0 and "No module named 'torch'" in p.stderr
    p = subprocess.run([str(py), "-c", "import onnxruntime, litserve, pydantic, prometheus_client, service.app"],
                       capture_output=True, text=True, env=image["env"], cwd="/")
    assert p.returncode == 0, p.stderr
    size = sum(f.stat().st_size for f in (image["root"] / "venv").rglob("*") if f.is_file())
    models = sum(f.stat().st_size for f in (image["root"] / "app" / "models").rglob("*") if f.is_file())
    print(f"\nruntime venv {size / 2**20:.0f} MB, models {models / 2**20:.1f} MB")
    assert size < 260 * 2**20


def test_image_command_serves_generate_and_classify(image):
    port = free_port()
    env = dict(image["env"], RNNSERVE_PORT=str(port))
    assert image["expose"] == "8000" and env["RNNSERVE_MODELS"].endswith("app/models")
    exe = str(image["root"] / "venv" / "bin" / image["cmd"][0])
    proc = subprocess.Popen([exe, *image["cmd"][1:]], env=env, cwd=image["workdir"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        events = []
        with httpx.stream("POST", url + "/generate", json={"prompt": "Love is", "max_tokens": 30}, timeout=30) as r:
            assert r.status_code == 200
            events = [l for l in r.iter_lines() if l]
        assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["finish_reason"] == "length"
        r = httpx.post(url + "/classify", json={"text": "Dobrý den, jak se máte?"}, timeout=30)
        assert r.status_code == 200 and r.json()["label"] in r.json()["scores"]
        assert httpx.get(url + "/info").json()["store"]["path"] == str(image["root"] / "state" / "sessions.db")
    finally:
        proc.terminate()
        proc.wait(20)
