"""The locust smoke run: a few users for 20 s against a real server, no request may fail."""
import csv
import sys

from tests.conftest import rnnserve


def test_locust_smoke(tmp_path, artifacts):
    import os
    out = tmp_path / "lt"
    env = dict(os.environ, RNNSERVE_MODELS=str(artifacts), LT_MAX_TOKENS="32")
    r = rnnserve("loadtest", "--users", 6, "--duration", "20s", "--out", out, env=env, check=False, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "locust_stats.csv")))
    total = next(row for row in rows if row["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 50 and int(total["Failure Count"]) == 0
    names = {row["Name"] for row in rows}
    assert {"/generate [stream]", "/classify [single]", "ttft", "tokens"} <= names
    assert (out / "report.html").exists()
