"""Every example of the README's "Try it" section, run against a real server of the bundled models: the
outputs the README shows are what the server answers (`...` in the README stands for anything)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Server

README = (ROOT / "README.md").read_text()
TRY_IT = README[README.index("## Try it"):README.index("\n## ", README.index("## Try it") + 5)]


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]


def pattern(expected: str) -> re.Pattern:
    """The README's text, with `...` matching anything (across lines)."""
    return re.compile(".*?".join(re.escape(part) for part in expected.split("...")), re.S)


def run_sh(script: str, url: str) -> str:
    """Run a README block against `url` (the README's http://127.0.0.1:8000 or :8001)."""
    script = script.replace("http://127.0.0.1:8000", url).replace("http://127.0.0.1:8001", url)
    p = subprocess.run(["bash", "-e", "-c", script], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_the_examples_answer_what_the_readme_shows(bundled):
    bs = blocks(TRY_IT)
    checked = 0
    for i, (lang, body) in enumerate(bs):
        if lang != "sh":
            continue
        out = run_sh(body, bundled.url)
        expected = [line[2:] for line in body.splitlines() if line.startswith(("# {", "# HTTP/"))]
        if i + 1 < len(bs) and bs[i + 1][0] == "":  # an output block follows: its final event and [DONE]
            shown = bs[i + 1][1].splitlines()
            expected += [line for line in shown if line.startswith('data: {"finish_reason"')]
            assert shown[-1] == "data: [DONE]" and out.rstrip().endswith("data: [DONE]")
        pos = 0
        for e in expected:  # in the order the README shows them
            m = pattern(e).search(out, pos)
            assert m, f"README shows {e!r}; the server answered:\n{out[pos:pos + 2000]}"
            pos = m.end()
            checked += 1
    assert checked >= 5


def test_the_openai_example_runs(bundled):
    (code,) = [body for lang, body in blocks(README) if lang == "python" and "OpenAI(" in body]
    p = subprocess.run([sys.executable, "-c", code.replace("http://127.0.0.1:8000", bundled.url)],
                       capture_output=True, text=True, timeout=120, env={**os.environ})
    assert p.returncode == 0, p.stderr
    assert len(p.stdout) == 80  # 80 tokens of one character each


def test_serve_your_own_model(tmp_path):
    """The section's two plain-PyTorch scripts in examples/ (a few seconds of training instead of a minute), its
    imports, its server (started here on a free port with the same models) and its requests."""
    start = README.index("## Serve your own model")
    section = README[start:README.index("\n## ", start + 5)]
    bs = blocks(section)
    (shown,) = [body for lang, body in bs if lang == "python"]
    assert shown in (ROOT / "examples" / "lm.py").read_text()  # the README shows the script's own model
    commands, requests = [body for lang, body in bs if lang == "sh"]
    (tmp_path / "models").symlink_to(ROOT / "models")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    printed = ""
    lines = commands.strip().splitlines()
    scripts = [line.split("#")[0].split() for line in lines if line.startswith("python ")]
    assert [s[1] for s in scripts] == ["examples/lm.py", "examples/clf.py"]
    for _, script in scripts:
        code = (ROOT / script).read_text()
        assert "time.time() + 60" in code
        p = subprocess.run([sys.executable, "-c", code.replace("time.time() + 60", "time.time() + 4")], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, env=env)
        assert p.returncode == 0, p.stderr
        printed += p.stdout
    lines = [line for line in lines if not line.startswith("python ")]
    labels = re.search(r"--labels (\S+)", commands).group(1)
    assert printed.strip() == labels  # the labels the script prints are the ones the README imports with
    for line in lines[:-1]:
        assert line.startswith("rnnserve import ")
        p = subprocess.run(["bash", "-e", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env=env)
        assert p.returncode == 0, p.stderr
    serve = lines[-1]
    assert serve.startswith("rnnserve serve ")
    models = ",".join(f"{name}={tmp_path / folder}" for name, folder in re.findall(r"--model (\w+)=(\S+)", serve))
    s = Server(models, RNNSERVE_STATE_DIR=tmp_path / "state")
    try:
        out = run_sh(requests, s.url).replace("\n\n", "\n")
        expected = [line[2:] for line in requests.splitlines() if line.startswith(("# {", "# data: {"))]
        pos = 0
        for e in expected:
            m = pattern(e).search(out, pos)
            assert m, f"README shows {e!r}; the server answered:\n{out[pos:pos + 2000]}"
            pos = m.end()
        assert '"label"' in out and "data: [DONE]" in out
    finally:
        s.stop()


def test_the_readme_is_a_front_door_whose_pointers_exist():
    assert len(README.splitlines()) <= 200
    named = set(re.findall(r"\b((?:docs|examples|deploy|scripts)/[\w./-]*\w)", README))
    assert {"docs/api.md", "docs/deployment.md", "docs/performance.md", "docs/models.md"} <= named
    assert [p for p in sorted(named) if not (ROOT / p).exists()] == []
