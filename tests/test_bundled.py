"""The bundled artifacts in models/: torch-free loading, manifest checks, recorded metrics reproduced."""
import json
import textwrap

import pytest

from tests.conftest import ROOT, rnnserve, run_without_torch

MODELS = ROOT / "models"
BUNDLED = ["fortunes", "fortunes-bpe", "langid"]


def test_bundled_models_are_small_enough():
    total = sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file())
    assert total <= 20 * 2**20, f"models/ holds {total / 2**20:.1f} MB"


def test_bundled_models_load_without_torch():
    p = run_without_torch(textwrap.dedent(f"""
        from service.artifact import load_artifact
        for name in {BUNDLED!r}:
            for int8 in (False, True):
                art = load_artifact({str(MODELS)!r} + "/" + name, int8=int8)
                print(name, art.kind, art.onnx_file)
    """))
    assert p.returncode == 0, p.stderr
    assert "fortunes lm model.onnx" in p.stdout and "langid classifier model.int8.onnx" in p.stdout


@pytest.mark.parametrize("name", BUNDLED)
def test_eval_reproduces_recorded_metrics(name):
    art = MODELS / name
    rec = json.loads((art / "eval_sample.json").read_text())
    out = json.loads(rnnserve("eval", art, "--data", art / rec["data"], "--json").stdout)
    want = rec["float32"]
    if out["kind"] == "lm":
        assert abs(out["bpc"] - want["bpc"]) < 1e-4 and out["tokens"] == want["tokens"]
    else:
        assert out["n"] == want["n"] and out["accuracy"] == want["accuracy"]
        assert abs(out["macro_f1"] - want["macro_f1"]) < 1e-9
        assert set(out["per_class"]) == set(want["per_class"])


def test_eval_reports_unknown_labels_without_crashing(tmp_path):
    data = tmp_path / "x.tsv"
    data.write_text("label\ttext\nen\tThe weather is nice today.\nfr\tIl fait beau aujourd'hui.\n", encoding="utf-8")
    r = rnnserve("eval", MODELS / "langid", "--data", data)
    assert "fr" in r.stdout and "accuracy" in r.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("lab,txt\nx,y\n", encoding="utf-8")
    r = rnnserve("eval", MODELS / "langid", "--data", bad, check=False)
    assert r.returncode == 2 and "label" in r.stderr and "Traceback" not in r.stderr
