"""The language-model recipe: batch orders that are functions of (seed, step), validation spread over a run and
kept, --resume continuing exactly, Ctrl-C leaving the best checkpoint, a 10 MB text in bounded memory, and
`rnnserve sample` keeping byte-level output valid UTF-8."""
import json
import resource
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from export import batches as B
from export.train import Interrupted, LMArgs, load_run, train_lm
from tests.conftest import ROOT, make_text, rnnserve


def test_orders_are_functions_of_seed_and_step():
    ids = np.random.default_rng(0).integers(0, 5000, 20_000).astype(np.int32)
    for kind in B.ORDERS:
        a = B.make_order(kind, ids, 8, 16, seed=3)
        b = B.make_order(kind, ids, 8, 16, seed=3)
        other = B.make_order(kind, ids, 8, 16, seed=4)
        steps = [0, 1, 5, a.steps_per_pass - 1, a.steps_per_pass, 3 * a.steps_per_pass + 2]
        for step in reversed(steps):  # any step, in any order: nothing depends on what was read before
            (xa, ya, fa), (xb, yb, fb) = a.batch(step), b.batch(step)
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and fa == fb
            assert torch.equal(xa[:, 1:], ya[:, :-1])  # targets are the next tokens
        assert kind == "contiguous" or not torch.equal(a.batch(0)[0], other.batch(0)[0])  # (a row's offset: < seq_len)
    w = B.make_order("windows", ids, 8, 16, seed=3, window=4)
    starts = w.starts(0)
    assert len(set(starts.tolist())) == len(starts) and starts.max() + w.span <= len(ids)  # one pass: each once
    fresh = [w.batch(s)[2] for s in range(8)]
    assert fresh == [True, False, False, False] * 2  # the state starts from zeros at each window
    x1 = w.batch(1)[0]
    assert torch.equal(torch.from_numpy(ids[starts[:8] + 16].astype(np.int64)), x1[:, 0])  # the next chunk
    assert not np.array_equal(w.starts(1), starts)  # the next pass: another offset and order


def args_for(text_file, out, **kw) -> LMArgs:
    return LMArgs(data=[str(text_file)], out=str(out), hidden=24, embed=8, seq_len=16, batch_size=8, steps=60,
                  eval_every=10, seed=2, threads=1, quiet=True, **kw)


def test_validation_points_are_spread_and_kept(tmp_path, text_file):
    m = train_lm(replace(args_for(text_file, tmp_path / "run"), eval_every=0))
    assert len(m["history"]) >= 10 and m["order"] == "windows"  # EVAL_POINTS over the run, and the last
    assert [h["step"] for h in m["history"]] == sorted({h["step"] for h in m["history"]})
    assert m["val_bpc"] == min(h["val_bpc"] for h in m["history"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["history"] == m["history"]


def test_resume_continues_from_the_same_step_with_the_same_optimizer_state(tmp_path, text_file, monkeypatch):
    whole = train_lm(args_for(text_file, tmp_path / "whole"))
    cut = args_for(text_file, tmp_path / "cut")
    real = B.Windows.batch

    def interrupted(self, step):
        if step == 27:
            raise KeyboardInterrupt
        return real(self, step)
    monkeypatch.setattr(B.Windows, "batch", interrupted)
    with pytest.raises(Interrupted, match="--resume"):
        train_lm(cut)
    monkeypatch.setattr(B.Windows, "batch", real)
    saved = torch.load(tmp_path / "cut" / "resume.pt", weights_only=False)
    assert saved["step"] == 27 and saved["optimizer"]["state"]  # Adam's moments kept
    model, _, _ = load_run(tmp_path / "cut")  # the best checkpoint so far loads
    resumed = train_lm(cut, resume=True)
    assert resumed["steps"] == whole["steps"] == 60
    a = torch.load(tmp_path / "whole" / "resume.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "resume.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same weights as the run never interrupted
    assert [h["val_bpc"] for h in resumed["history"]] == [h["val_bpc"] for h in whole["history"]]


def test_ctrl_c_leaves_the_best_checkpoint_and_resume_finishes(tmp_path, text_file):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "rnnserve", "train", "lm", "--data", str(text_file), "--out", str(out),
                          "--hidden", "24", "--embed", "8", "--seq-len", "16", "--batch-size", "8", "--steps", "20000",
                          "--eval-every", "25", "--threads", "1", "--quiet"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "rnnserve train lm --resume" in err, err
    model, tok, _ = load_run(out)
    assert model.config["kind"] == "lm"
    step = torch.load(out / "resume.pt", weights_only=False)["step"]
    bad = rnnserve("train", "lm", "--resume", out, "--data", text_file, check=False)
    assert bad.returncode == 2 and "--resume takes the run's own settings" in bad.stderr
    args = json.loads((out / "args.json").read_text())
    args["steps"] = step + 30  # finish sooner than the 20,000 asked for: the run's own file, edited
    (out / "args.json").write_text(json.dumps(args))
    r = rnnserve("train", "lm", "--resume", out, "--quiet")
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == step + 30 and "best val bits/char" in r.stdout


def test_a_10_mb_text_trains_in_bounded_memory(tmp_path):
    """10 MB of text, 10 s of training: the ids are encoded a piece at a time into an int32 array, batches are
    gathered from it; the whole process stays under 1.5 GB (torch itself is about 0.4 GB)."""
    big = tmp_path / "big.txt"
    unit = make_text(2000, seed=9)
    big.write_text(unit * (10_000_000 // len(unit) + 1), encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rnnserve("train", "lm", "--data", big, "--out", tmp_path / "run", "--hidden", 64, "--time-budget", 10,
             "--quiet", "--threads", 2)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["steps"] > 0 and m["train_tokens"] > 0
    assert peak_mb < 1536, peak_mb
    assert before <= resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def test_sample_keeps_byte_level_output_valid_utf8(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(("Café crème 😀 жизнь и мир. " + make_text(1, seed=1)) * 300, encoding="utf-8")
    out = tmp_path / "bpe"
    rnnserve("train", "lm", "--data", text, "--out", out, "--tokenizer", "bpe", "--vocab-size", 300, "--hidden", 16,
             "--seq-len", 16, "--batch-size", 8, "--steps", 5, "--quiet")
    for seed in range(6):  # barely trained, sampled hot: byte tokens in any order unless masked
        s = rnnserve("sample", out, "--prompt", "Caf", "--max-tokens", 80, "--temperature", 2.0, "--seed", seed)
        assert "\ufffd" not in s.stdout, s.stdout
