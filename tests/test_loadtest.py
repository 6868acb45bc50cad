"""The locust smoke run: a few users for 20 s against a real server, no request may fail."""
import csv
import sys

from tests.conftest import rnnserve


def test_locust_smoke(tmp_path, artifacts):
    import os
    out = tmp_path / "lt"
    env = dict(os.environ, RNNSERVE_MODELS=str(artifacts), LT_MAX_TOKENS="32")
    r = rnnserve("loadtest", "--users", 6, "--duration", "8s", "--out", out, env=env, check=False, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "locust_stats.csv")))
    total = next(row for row in rows if row["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 50 and int(total["Failure Count"]) == 0
    names = {row["Name"] for row in rows}
    assert {"/generate [stream]", "/classify [single]", "ttft", "tokens"} <= names
    assert (out / "report.html").exists()


def test_benchmark_clients_measure_real_traffic(server, tmp_path):
    """`rnnserve bench`'s clients (aiohttp, own process) against a real server: streams are counted token by
    token from the SSE events, classify requests from 200 responses, and failures are reported."""
    import json
    import subprocess
    from tests.conftest import ROOT

    def run(*args):
        out = subprocess.run([sys.executable, "-m", "loadtest.clients", *map(str, args), "--url", server.url],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    s = run("stream", "--concurrency", 4, "--tokens", 16, "--model", "tinylm")
    assert s["failures"] == 0 and s["requests"] == 4
    assert s["tokens"] == 4 * 16 and s["ttft_p50"] > 0 and s["tokens_per_event"] >= 1
    assert 0 < s["chars"] <= s["tokens"] and s["chars_per_s"] > 0  # characters as streamed (one per token, or none)
    texts = tmp_path / "t.csv"
    texts.write_text("label,text\nsoft,a gentle breeze\nhard,rock and stone\n")
    c = run("classify", "--concurrency", 8, "--seconds", 1, "--texts", texts)
    assert c["failures"] == 0 and c["texts"] > 8 and c["mean_chars"] == (15 + 14) / 2
    bad = run("stream", "--concurrency", 2, "--tokens", 4, "--model", "no-such-model")
    assert bad["failures"] == 2 and bad["tokens"] == 0
