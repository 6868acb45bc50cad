"""ONNX export: the contract, parity with PyTorch, native recurrent ops, the torch-free loader."""
import json
import os
import textwrap

import numpy as np
import pytest
import torch

from export.models import Classifier, LanguageModel
from export.onnx_export import ExportError, export, recurrent_ops
from export.train import save_run, save_val_sample, write_json
from service import tokenizer as T
from service.artifact import ArtifactError, load_artifact
from tests.conftest import make_text, rnnserve, run_without_torch

TEXT = make_text(60, seed=3)


def make_run(tmp_path, kind, cell, layers=1, name=None, tokenizer="char"):
    torch.manual_seed(layers)
    tok = T.build(tokenizer, [TEXT], vocab_size=None if tokenizer == "char" else 300, min_count=1)
    run = tmp_path / (name or f"{kind}-{cell}-{layers}")
    if kind == "lm":
        model = LanguageModel(tok.vocab_size, cell, layers, hidden_size=24, embed_dim=8)
        write_json_metrics = {"kind": "lm", "val_bpc": 3.1, "val_loss": 2.1, "train_tokens": 10, "seconds": 1}
        save_val_sample(run, [TEXT[i * 60:(i + 1) * 60] for i in range(4)])
    else:
        model = Classifier(tok.vocab_size, 3, cell, hidden_size=12, embed_dim=8)
        write_json_metrics = {"kind": "classifier", "accuracy": 0.5, "macro_f1": 0.4, "labels": ["a", "b", "c"],
                              "confusion": [], "n_val": 3, "seconds": 1}
        lines = TEXT.splitlines()
        save_val_sample(run, lines[:6] + ["x"], ["a"] * 7)
    save_run(run, model.eval(), tok, {"note": "test"})
    write_json(run / "metrics.json", write_json_metrics)
    return run, model.eval(), tok


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 3])
def test_lm_export_matches_torch_and_chunked_feeding(tmp_path, cell, layers):
    run, model, tok = make_run(tmp_path, "lm", cell, layers)
    manifest = export(run, tmp_path / "art")
    assert manifest["parity"] <= 1e-4
    assert recurrent_ops(tmp_path / "art" / "model.onnx") == [cell.upper()] * layers  # native ops, no loops
    if cell == "gru":  # PyTorch's GRU applies the reset gate after the matmul
        import onnx
        nodes = [n for n in onnx.load(str(tmp_path / "art" / "model.onnx")).graph.node if n.op_type == "GRU"]
        assert all(a.i == 1 for n in nodes for a in n.attribute if a.name == "linear_before_reset")
        assert all(any(a.name == "linear_before_reset" for a in n.attribute) for n in nodes)
    art = load_artifact(tmp_path / "art")
    assert art.manifest["inputs"] == (["tokens", "h0", "c0"] if cell == "lstm" else ["tokens", "h0"])
    rng = np.random.default_rng(0)
    for batch, time in [(1, 1), (3, 17), (8, 5)]:
        tokens = rng.integers(2, tok.vocab_size, size=(batch, time))
        logits, state = art.run(tokens, art.zero_state(batch))
        with torch.no_grad():
            ref_logits, ref_state = model(torch.from_numpy(tokens))
        ref_state = ref_state if isinstance(ref_state, tuple) else (ref_state,)
        assert logits.shape == (batch, time, tok.vocab_size)
        assert np.abs(logits - ref_logits.numpy()).max() < 1e-4
        for s, r in zip(state, ref_state):
            assert s.shape == (layers, batch, 24) and np.abs(s - r.numpy()).max() < 1e-4
        # the same sequence fed in chunks, passing hn/cn back as h0/c0
        st, pieces = art.zero_state(batch), []
        for a, b in [(0, time // 2), (time // 2, time // 2 + 1), (time // 2 + 1, time)]:
            if a < b:
                lg, st = art.run(tokens[:, a:b], st)
                pieces.append(lg)
        assert np.abs(np.concatenate(pieces, 1) - logits).max() < 1e-5
        for s, full in zip(st, state):
            assert np.abs(s - full).max() < 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_classifier_export_padding_and_lengths(tmp_path, cell):
    run, model, tok = make_run(tmp_path, "classifier", cell)
    export(run, tmp_path / "art")
    assert recurrent_ops(tmp_path / "art" / "model.onnx") == [cell.upper()] * 2
    art = load_artifact(tmp_path / "art")
    assert art.labels == ["a", "b", "c"] and art.manifest["bidirectional"] is True
    texts = ["the cat sat", "a", "bright stars shine at night so we sing", "rain"]
    seqs = [tok.encode(t) for t in texts]
    lengths = np.array([len(s) for s in seqs])
    tokens = np.zeros((len(seqs), lengths.max()), np.int64)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    got = art.session.run(None, {"tokens": tokens, "lengths": lengths})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens), torch.from_numpy(lengths)).numpy()
    assert np.abs(got - ref).max() < 1e-4
    for i, s in enumerate(seqs):  # a padded row gives the logits of the text alone
        alone = art.session.run(None, {"tokens": np.array([s]), "lengths": np.array([len(s)])})[0]
        assert np.abs(alone[0] - got[i]).max() < 1e-5


@pytest.mark.parametrize("kind", ["lm", "classifier"])
@pytest.mark.parametrize("tokenizer", ["char", "bpe", "word"])
def test_every_tokenizer_round_trips_through_export_and_load(tmp_path, kind, tokenizer):
    run, model, tok = make_run(tmp_path, kind, "gru", tokenizer=tokenizer)
    if kind == "classifier":
        write_json(run / "metrics.json", {**json.loads((run / "metrics.json").read_text()), "train": {"max_len": 50}})
    m = export(run, tmp_path / "art")
    assert m["tokenizer_type"] == tokenizer and m["vocab_size"] == tok.vocab_size
    assert (tmp_path / "art" / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    art = load_artifact(tmp_path / "art")
    assert art.tokenizer.type == tokenizer and art.info()["tokenizer"] == tokenizer
    text = "the cat sat on the mat, bright stars"
    assert art.tokenizer.encode(text) == tok.encode(text)
    assert art.tokenizer.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    if tokenizer != "char":  # the library's own file: it loads as it is
        from tokenizers import Tokenizer
        assert Tokenizer.from_file(str(tmp_path / "art" / "tokenizer.json")).encode(text).ids == tok.encode(text)
    if kind == "lm":
        assert m["bos_text"] == (None if tokenizer == "word" else "\n")  # words have no newline token
        logits, _ = art.run(np.array([tok.encode(text)]))
        with torch.no_grad():
            ref, _ = model(torch.tensor([tok.encode(text)]))
        assert np.abs(logits - ref.numpy()).max() < 1e-4
    else:  # a classifier's window: characters for char, tokens for the others
        assert (m["max_chars"], m.get("max_tokens")) == ((50, None) if tokenizer == "char" else (None, 50))
        unit = "chars" if tokenizer == "char" else "tokens"
        assert art.info()[f"max_{unit}"] == 50 and art.info()[f"read_{unit}"] == 200


def test_manifest_contents(tmp_path):
    run, _, tok = make_run(tmp_path, "lm", "lstm")
    export(run, tmp_path / "art")
    m = json.loads((tmp_path / "art" / "model.json").read_text())
    for key in ("format_version", "kind", "cell", "layers", "hidden", "vocab_size", "bidirectional", "inputs",
                "outputs", "labels", "pad_id", "unk_id", "onnx_sha256", "opset", "metrics", "parity",
                "exported_from"):
        assert key in m, key
    assert m["kind"] == "lm" and m["vocab_size"] == tok.vocab_size and m["metrics"]["val_bpc"] == 3.1
    assert sorted(os.listdir(tmp_path / "art")) == ["model.json", "model.onnx", "tokenizer.json"]


def test_export_refuses_bad_parity_and_leaves_nothing(tmp_path, monkeypatch):
    run, _, _ = make_run(tmp_path, "lm", "gru")
    import export.onnx_export as ox
    monkeypatch.setattr(ox, "PARITY_LIMIT", -1.0)
    with pytest.raises(ExportError, match="parity"):
        export(run, tmp_path / "art")
    assert not (tmp_path / "art").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")] == []


def test_int8_quantisation(tmp_path):
    run, _, _ = make_run(tmp_path, "lm", "lstm")
    r = rnnserve("export", run, "--out", tmp_path / "art", "--quantize", "int8")
    assert "int8" in r.stdout
    m = json.loads((tmp_path / "art" / "model.json").read_text())
    assert m["int8"]["onnx"] == "model.int8.onnx" and m["int8"]["parity"] < 0.5
    art = load_artifact(tmp_path / "art", int8=True)
    assert art.onnx_file == "model.int8.onnx"


def test_loader_refuses_corrupt_model_and_manifest(tmp_path):
    run, _, _ = make_run(tmp_path, "lm", "lstm")
    export(run, tmp_path / "art")
    art = tmp_path / "art"
    onnx_bytes = (art / "model.onnx").read_bytes()
    (art / "model.onnx").write_bytes(onnx_bytes[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match=r"model.onnx: sha256 .* does not match"):
        load_artifact(art)
    (art / "model.onnx").write_bytes(onnx_bytes)
    manifest = json.loads((art / "model.json").read_text())
    bad = dict(manifest, format_version=99)
    (art / "model.json").write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="model.json: format_version 99 is not supported"):
        load_artifact(art)
    bad = dict(manifest, outputs=["logits", "h_out", "cn"])
    (art / "model.json").write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="model.json: inputs/outputs"):
        load_artifact(art)
    bad = {k: v for k, v in manifest.items() if k != "onnx_sha256"}
    (art / "model.json").write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="missing key"):
        load_artifact(art)
    (art / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="model.json: not valid JSON"):
        load_artifact(art)


def test_loader_runs_without_torch(tmp_path):
    run, _, _ = make_run(tmp_path, "lm", "gru")
    export(run, tmp_path / "art")
    p = run_without_torch(textwrap.dedent(f"""
        import numpy as np
        from service.artifact import load_artifact
        art = load_artifact({str(tmp_path / 'art')!r})
        logits, state = art.run(np.array([[2, 3]]))
        print("ok", logits.shape, state[0].shape)
    """))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ok")
