"""Every example of the README's "Try it" section, run against a real server of the bundled models: the
outputs the README shows are what the server answers (`...` in the README stands for anything)."""
import os
import re
import subprocess
import sys

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


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    s = Server(ROOT / "models", RNNSERVE_STATE_DIR=tmp_path_factory.mktemp("readme"))
    yield s
    s.stop()


def run_sh(script: str, url: str) -> str:
    """Run a README block against `url` (the README's http://127.0.0.1:8000)."""
    script = script.replace("http://127.0.0.1:8000", url)
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

