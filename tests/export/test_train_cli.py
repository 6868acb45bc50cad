import json
import math

import torch

from export.train import Schedule, auto_dropout, estimate_passes
from tests.conftest import make_fortunes, rnnserve


def test_lm_training_run_loss_falls_and_checkpoint_loads(tmp_path, text_file):
    out = tmp_path / "run"
    r = rnnserve("train", "lm", "--data", text_file, "--out", out, "--hidden", 48, "--embed", 16,
                 "--seq-len", 32, "--batch-size", 8, "--steps", 120, "--eval-every", 40, "--lr", 1e-2, "--seed", 1)
    assert "best val bits/char" in r.stdout and "held-out tail" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    for k in ("val_bpc", "val_loss", "train_tokens", "seconds"):
        assert k in m
    bpcs = [h["val_bpc"] for h in m["history"]]
    assert bpcs[-1] < bpcs[0] - 0.5, bpcs  # it learns
    assert m["val_bpc"] == min(bpcs)  # best kept
    blob = torch.load(out / "checkpoint.pt", weights_only=True)
    assert blob["config"]["kind"] == "lm" and blob["config"]["hidden_size"] == 48
    from export.train import load_run
    model, tok, _ = load_run(out)
    s = rnnserve("sample", out, "--prompt", "The ", "--max-tokens", 40, "--temperature", 0.5, "--seed", 3)
    assert s.stdout.startswith("The ") and len(s.stdout.rstrip("\n")) >= 30
    s2 = rnnserve("sample", out, "--prompt", "The ", "--max-tokens", 40, "--temperature", 0.5, "--seed", 3)
    assert s.stdout == s2.stdout


def test_same_seed_same_model(tmp_path, text_file):
    args = ["train", "lm", "--data", text_file, "--hidden", 16, "--embed", 8, "--seq-len", 16,
            "--batch-size", 4, "--steps", 10, "--seed", 5, "--quiet", "--threads", 1]
    rnnserve(*args, "--out", tmp_path / "a")
    rnnserve(*args, "--out", tmp_path / "b")
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fortune_training_time_budget_and_gru(tmp_path):
    f = tmp_path / "fortunes"
    f.write_text(make_fortunes(), encoding="utf-8")
    out = tmp_path / "gru"
    rnnserve("train", "lm", "--data", f, "--out", out, "--cell", "gru", "--layers", 2, "--hidden", 16,
             "--embed", 8, "--seq-len", 16, "--batch-size", 4, "--time-budget", 3, "--quiet")
    m = json.loads((out / "metrics.json").read_text())
    assert m["seconds"] >= 3 and m["steps"] > 0  # ran until the budget was spent (how fast is not asserted)


def test_schedule_stops_at_the_first_limit_reached():
    now = [100.0]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = Schedule(opt, 1.0, total_steps=1000, budget=10.0, clock=lambda: now[0])
    assert not s.done(0)
    now[0] = 105.0
    assert s.progress(100) == 0.5 and not s.done(100)  # half the budget is the furthest limit
    assert s.done(1000)  # the step count ends it first
    now[0] = 110.0
    assert s.done(1)  # the budget ends it
    assert abs(s.update(999) - 0.05) < 1e-6  # cosine down to 5% at the end


def test_classifier_training_run(tmp_path, csv_file):
    out = tmp_path / "clf"
    r = rnnserve("train", "classifier", "--data", csv_file, "--out", out, "--hidden", 16, "--embed", 8,
                 "--epochs", 6, "--batch-size", 16, "--lr", 1e-2, "--cell", "gru")
    m = json.loads((out / "metrics.json").read_text())
    for k in ("accuracy", "macro_f1", "labels", "confusion", "n_val", "seconds"):
        assert k in m
    assert m["labels"] == ["hard", "soft"] and m["accuracy"] >= 0.9
    assert sum(map(sum, m["confusion"])) == m["n_val"] == 20
    assert "true\\pred" in r.stdout


def test_compare_prints_measured_table(tmp_path, text_file):
    r = rnnserve("compare", "--data", text_file, "--time-budget", 2, "--hidden", 16, "--out", tmp_path / "cmp",
                 "--quiet", "--tokenizers", "char,bpe")
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["cell", "tokens", "vocab", "params"]
    assert [line.split()[:2] for line in lines[2:]] == [["LSTM", "char"], ["GRU", "char"], ["LSTM", "bpe"],
                                                        ["GRU", "bpe"]]
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert rows[0]["params"] > rows[1]["params"]  # an LSTM has 4 gates, a GRU 3
    assert rows[0]["chars_per_token"] == 1 and rows[2]["chars_per_token"] > 1.5  # BPE tokens hold several
    assert rows[2]["inference_chars_per_s"] > rows[2]["inference_tokens_per_s"]
    bad = rnnserve("compare", "--data", text_file, "--time-budget", 1, "--tokenizers", "char,sentencepiece",
                   check=False)
    assert bad.returncode == 2 and "sentencepiece" in bad.stderr


def test_bpe_and_word_models_are_scored_in_bits_per_character(tmp_path, text_file):
    for kind in ("bpe", "word"):
        out = tmp_path / kind
        r = rnnserve("train", "lm", "--data", text_file, "--out", out, "--tokenizer", kind, "--vocab-size", 300,
                     "--hidden", 32, "--seq-len", 16, "--batch-size", 8, "--steps", 40, "--quiet")
        assert f"{kind} vocabulary of" in r.stdout
        m = json.loads((out / "metrics.json").read_text())
        assert m["tokenizer"] == kind and m["val_split"] == "tail" and m["chars_per_token"] > 1.5
        best = next(h for h in m["history"] if h["step"] == m["best_step"])
        # the tokens' losses in bits over the characters they stand for; perplexity stays per token
        assert abs(m["val_bpc"] - best["val_loss"] * best["val_tokens"] / math.log(2) / best["val_chars"]) < 1e-9
        assert abs(m["val_ppl"] - math.exp(best["val_loss"])) < 1e-6
        library_type = json.loads((out / "tokenizer.json").read_text())["model"]["type"]
        assert library_type == ("BPE" if kind == "bpe" else "WordLevel")
    bad = rnnserve("train", "lm", "--data", text_file, "--out", tmp_path / "x", "--tokenizer", "bpe", "--vocab-size",
                   100, check=False)
    assert bad.returncode == 2 and "--vocab-size 100" in bad.stderr and "Traceback" not in bad.stderr


def test_dropout_follows_the_number_of_passes(tmp_path, text_file):
    """Default dropout is on only for runs that read the text many times (they would over-fit it);
    an explicit --dropout always wins; with a time budget the passes are estimated from measured speed."""
    def run(name, *extra):
        # big batches: only the number of passes over the text matters here, not what is learnt
        rnnserve("train", "lm", "--data", text_file, "--out", tmp_path / name, "--hidden", 16, "--embed", 8,
                 "--seq-len", 32, "--batch-size", 16, "--quiet", "--threads", 1, *extra)
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        if "--epochs" in extra:  # decided before the first checkpoint: the checkpoint says what was trained
            assert torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["config"]["dropout"] == m["dropout"]
        return m
    assert run("few", "--epochs", 2)["dropout"] == 0.0
    assert run("many", "--epochs", 12)["dropout"] == 0.25
    assert run("explicit", "--epochs", 12, "--dropout", 0.1)["dropout"] == 0.1
    # with a time budget the decision follows the speed measured in the run (no assert on the speed itself:
    # a slower machine reads the text fewer times, and rightly trains without dropout)
    m = run("budget", "--time-budget", 2)
    assert m["expected_passes"] > 0 and m["dropout"] == auto_dropout(m["expected_passes"])


def test_pass_estimate_and_the_dropout_rule():
    assert estimate_passes(600, 50_000, 10.0, 1_000_000) == 3.0  # 5,000 tokens/s for 600 s over 1 M tokens
    assert estimate_passes(120, 1000, 0.0, 100) > 1e9  # no time measured yet: many passes, never a crash
    assert auto_dropout(8.0) == 0.0 and auto_dropout(8.1) == 0.25
