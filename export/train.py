"""Training loops, validation metrics and checkpoints.

Language models train with truncated backpropagation through time: the text
is laid out as `batch_size` contiguous streams, read `seq_len` tokens at a
time, and the (detached) state is carried from one chunk to the next, so the
model sees context longer than one chunk. The tokens are characters, byte-level
BPE pieces or words (`tokenizer`); validation is scored in bits per character
of the held-out text whatever they are, so the kinds compare on one scale. Classifiers train on batches of
texts of one length where there are enough of them (no padding, and the model
then skips packing, which PyTorch runs about four times slower on CPU), the
rest in length-sorted batches, so little compute goes into padding.

A run folder holds `checkpoint.pt` (state dict + JSON config, loadable with
`torch.load(weights_only=True)`), `tokenizer.json` and `metrics.json`.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from . import batches as B
from . import data as D
from service.evaluate import classification_report  # torch-free; eval reports the same figures

from service import tokenizer as T  # the one tokenizer module (torch-free), shared with the service

from .models import Classifier, LanguageModel, build

LN2 = math.log(2)


@dataclass
class LMArgs:
    data: list[str]
    out: str
    cell: str = "lstm"
    layers: int = 1
    hidden: int = 448
    embed: int | None = None  # None = 64 for a char vocabulary, 256 for bpe/word (EMBED_BY_TOKENIZER)
    dropout: float | None = None  # None = auto: AUTO_DROPOUT when the run reads the text > AUTO_PASSES times
    seq_len: int = 64
    batch_size: int = 32
    lr: float = 6e-3
    steps: int | None = None
    epochs: float | None = None
    time_budget: float | None = None
    seed: int = 0
    threads: int | None = None
    val_fraction: float = 0.05
    val_split: str = "auto"  # tail | shuffle | auto (tail for a continuous text, shuffle for fortune entries)
    eval_every: int = 0  # steps; 0 = EVAL_POINTS validations spread over the run (and one at the end)
    clip: float = 1.0
    format: str = "auto"
    order: str = "windows"  # windows | contiguous (export/batches.py)
    window: int = 4  # windows order: seq_len chunks read in a row with the state carried
    plot: str | None = None  # draw the validation curve to this PNG at the end
    tokenizer: str = "char"  # char | bpe | word
    vocab_size: int | None = None  # bpe/word: the vocabulary's size (default service.tokenizer.DEFAULT_VOCAB)
    min_count: int | None = None  # fewest occurrences a character, merge or word needs to enter it
    quiet: bool = False


@dataclass
class ClassifierArgs:
    data: str
    out: str
    cell: str = "lstm"
    hidden: int = 128
    embed: int = 64
    dropout: float = 0.3
    layers: int = 2
    batch_size: int = 64
    lr: float = 2e-3
    steps: int | None = None
    epochs: float | None = None
    time_budget: float | None = None
    seed: int = 0
    threads: int | None = None
    val_fraction: float = 0.1
    max_len: int = 400  # characters (char tokenizer) or tokens of each text read
    tokenizer: str = "char"
    vocab_size: int | None = None
    min_count: int = 2
    eval_every: int = 0
    clip: float = 1.0
    val_data: str | None = None
    quiet: bool = False


def set_seed(seed: int, threads: int | None) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def progress(total: int | None, desc: str, quiet: bool):
    # The bar is for people: off when output goes to a file or a pipe, or with --quiet.
    return tqdm(total=total, desc=desc, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True,
                unit="step")


class Schedule:
    """Learning rate: linear warm-up, then cosine decay to 5% over the run.

    The run's length is whichever limit comes first (steps, epochs or the
    time budget), so progress is measured against all of them."""

    def __init__(self, opt, lr: float, total_steps: int | None, budget: float | None, warmup: int = 50,
                 clock=time.monotonic, elapsed: float = 0.0):
        """`elapsed`: seconds of the run already spent (a resumed run's)."""
        self.opt, self.lr, self.total, self.budget, self.warmup = opt, lr, total_steps, budget, warmup
        self.clock = clock
        self.t0 = clock() - elapsed

    def progress(self, step: int) -> float:
        p = 0.0
        if self.total:
            p = max(p, step / self.total)
        if self.budget:
            p = max(p, (self.clock() - self.t0) / self.budget)
        return min(p, 1.0)

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0

    def update(self, step: int) -> float:
        scale = min(1.0, (step + 1) / self.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * self.progress(step))))
        for g in self.opt.param_groups:
            g["lr"] = self.lr * scale
        return self.lr * scale


def save_run(out: Path, model: nn.Module, tok: T.Tokenizer, train_config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "checkpoint.pt.tmp"
    torch.save({"state_dict": model.state_dict(), "config": model.config, "train": train_config}, tmp)
    os.replace(tmp, out / "checkpoint.pt")
    tok.save(out / "tokenizer.json")


def load_run(run_dir: str | Path) -> tuple[nn.Module, T.Tokenizer, dict]:
    run = Path(run_dir)
    ck = run / "checkpoint.pt"
    if not ck.exists():
        raise D.DataError(f"{ck}: no checkpoint (train one with `rnnserve train`)")
    blob = torch.load(ck, map_location="cpu", weights_only=True)
    model = build(blob["config"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics.setdefault("train", blob.get("train", {}))
    return model, T.load(run / "tokenizer.json"), metrics


def save_val_sample(out: Path, texts: list[str], labels: list[str] | None = None, held_out=None) -> None:
    """A few validation texts kept with the run: export checks parity on them, and measures an int8 model's
    cost on `held_out` (a language model's first 20,000 held-out characters; a classifier's first 512
    held-out [label, text] rows)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "val_sample.json", {"texts": texts, "labels": labels, "held_out": held_out})


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- language model


def batchify(ids: list[int], batch_size: int) -> torch.Tensor:
    """Lay the id sequence out as `batch_size` contiguous rows (batch, n)."""
    n = len(ids) // batch_size
    if n < 2:
        raise D.DataError(f"text too short for batch size {batch_size}: {len(ids)} tokens")
    return torch.tensor(ids[: n * batch_size], dtype=torch.long).view(batch_size, n)


@torch.no_grad()
def evaluate_lm(model: LanguageModel, ids: list[int], chars: list[int] | None = None, batch_size: int = 16,
                seq_len: int = 256) -> dict:
    """Cross-entropy over the text read as `batch_size` streams, state carried across chunks: per token
    (`val_loss` in nats, `val_ppl`) and in bits per character (`val_bpc`: the predicted tokens' losses in
    bits over the characters of text they stand for, `chars` per token from the tokenizer's
    `encode_counted`; one each when None, as for a character model)."""
    model.eval()
    batch_size = max(1, min(batch_size, len(ids) // 2))
    rows = batchify(ids, batch_size)
    widths = batchify(chars if chars is not None else [1] * len(ids), batch_size)
    state, total, count, n_chars = None, 0.0, 0, 0
    for i in range(0, rows.shape[1] - 1, seq_len):
        x = rows[:, i:i + seq_len]
        y = rows[:, i + 1:i + 1 + seq_len]
        x = x[:, : y.shape[1]]
        logits, state = model(x, state)
        total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                             reduction="sum").item()
        count += y.numel()
        n_chars += int(widths[:, i + 1:i + 1 + y.shape[1]].sum())
    loss = total / count
    return {"val_loss": loss, "val_bpc": total / LN2 / max(1, n_chars), "val_ppl": math.exp(loss),
            "val_tokens": count, "val_chars": n_chars}


# A long run over a small text memorises it: on 1 MB of English the 600 s run without dropout read the
# text 28 times and its validation loss stalled at 2.20 bits/char after 4 minutes while the training
# loss kept falling; with dropout 0.2 it kept improving (2.10). A short run is still learning, and
# dropout only slows it (120 s: 2.172 without, 2.196 with). So by default dropout follows the number
# of passes the run will make over the training text.
AUTO_DROPOUT, AUTO_PASSES, PROBE_STEPS = 0.25, 8.0, 30


# A subword token stands for a few characters, so its embedding has more to say. 120 s runs with BPE 1,024, bits
# per char: the Shakespeare file's tail 1.958 (embedding 64), 1.930 (128), 1.905 (256); 1 MB of fortunes (held-out
# entries) 2.209 (64), 2.133 (256). Characters gain nothing from a wider one (2.078 with 128 against 2.074).
EMBED_BY_TOKENIZER = {"char": 64, "bpe": 256, "word": 256}


def auto_dropout(passes: float) -> float:
    return AUTO_DROPOUT if passes > AUTO_PASSES else 0.0


def estimate_passes(budget_s: float, tokens_seen: int, elapsed_s: float, text_tokens: int) -> float:
    """Passes over the text a run with this time budget will make, from the speed measured so far."""
    return budget_s * tokens_seen / max(elapsed_s, 1e-9) / text_tokens


EVAL_POINTS = 12  # validations over a run (besides the last): enough to see the curve, ~5% of a 120 s run
RISE_WARNING = 0.10  # bits/char above the best so far, after the first 20% of a run: said, and kept in metrics
TOKENIZER_CHARS = 20_000_000  # a bpe/word vocabulary is learnt from at most this much of the training text
VAL_CHARS = 250_000  # characters of the held-out part a run validates on (all of it for texts up to 5 MB)


class Interrupted(Exception):
    """Ctrl-C during training: the best checkpoint and the resume state are saved; `--resume` continues."""


def train_lm(a: LMArgs, resume: bool = False) -> dict:
    """Train (or, with `resume`, continue the run in `a.out` from its last saved step: same batches, same
    optimizer state, the rest of the budget)."""
    set_seed(a.seed, a.threads)
    out = Path(a.out)
    docs = D.read_documents(a.data, a.format)
    val_split = D.val_split_kind(docs, a.val_split)
    train_text, val_text = D.lm_corpus(docs, a.val_fraction, a.seed, val_split)
    del docs
    t_tok = time.monotonic()
    if resume:
        tok = T.load(out / "tokenizer.json")
    else:
        tok = T.build(a.tokenizer, [train_text[:TOKENIZER_CHARS]], a.vocab_size, a.min_count)  # training text only
    out.mkdir(parents=True, exist_ok=True)
    big = len(train_text) > B.BIG_CHARS
    train_ids = B.encode_ids(tok, train_text, out / "train_ids.int32" if big else None)
    if len(val_text) > VAL_CHARS:  # a big text's validation stays a fixed cost: the start of its held-out part
        val_text = val_text[:val_text.rfind("\n", 0, VAL_CHARS) + 1 or VAL_CHARS]
    val_ids, val_chars = tok.encode_counted(val_text)
    tokenize_s = time.monotonic() - t_tok
    n_train_chars = len(train_text)
    del train_text
    try:
        order = B.make_order(a.order, train_ids, a.batch_size, a.seq_len, a.seed, a.window)
    except ValueError as e:
        raise D.DataError(str(e)) from None
    per_pass = order.steps_per_pass
    total = a.steps or (round(a.epochs * per_pass) if a.epochs else None)
    if total is None and a.time_budget is None:
        total = 10 * per_pass  # default: ten passes over the text
    # auto dropout: known now when the run is counted in steps; with a time budget it is set after
    # PROBE_STEPS steps, from the measured speed (the run starts without, as a short one stays)
    auto = a.dropout is None
    dropout = (auto_dropout(total / per_pass) if total and not a.time_budget else 0.0) if auto else a.dropout
    embed = a.embed or EMBED_BY_TOKENIZER[a.tokenizer]
    model = LanguageModel(tok.vocab_size, a.cell, a.layers, a.hidden, embed, dropout)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    history, best, step, seen, elapsed0 = [], None, 0, 0, 0.0
    train_cfg = {**asdict(a), "embed": embed, "dropout": dropout, "dropout_auto": auto, "vocab_size": tok.vocab_size,
                 "val_split": val_split, "train_chars": n_train_chars, "val_chars": len(val_text),
                 "train_tokens": int(len(train_ids)), "chars_per_token": round(n_train_chars / max(1, len(train_ids)), 3),
                 "tokenize_seconds": round(tokenize_s, 2)}
    warnings: list[str] = []
    state = None  # the recurrent state carried into the next step
    if resume:
        saved = torch.load(out / "resume.pt", map_location="cpu", weights_only=False)
        model.set_dropout(saved["dropout"])
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        history, best, step, seen, elapsed0 = (saved["history"], saved["best"], saved["step"], saved["seen"],
                                               saved["elapsed"])
        warnings, train_cfg = saved.get("warnings", []), saved["train_cfg"]
        torch.set_rng_state(saved["torch_rng"])
        state = saved.get("carried")
        random.setstate(saved["py_rng"])
    sched = Schedule(opt, a.lr, total, a.time_budget, elapsed=elapsed0)
    t0 = sched.t0  # the run's start, a resumed run's earlier time counted in
    if a.eval_every:
        due = lambda st, el: st % a.eval_every == 0  # noqa: E731
    else:  # EVAL_POINTS validations spread over the run, by time with a budget, else by steps
        def due(st, el):
            frac = max(el / a.time_budget if a.time_budget else 0.0, st / total if total else 0.0)
            return int(frac * EVAL_POINTS) > len(history)

    def validate():
        nonlocal best
        m = evaluate_lm(model, val_ids, val_chars)
        m.update(step=step, train_tokens=seen, seconds=round(time.monotonic() - t0, 2))
        history.append(m)
        if best is None or m["val_bpc"] < best["val_bpc"]:
            best = m
            save_run(out, model, tok, train_cfg)
        elif sched.progress(step) > 0.2 and m["val_bpc"] > best["val_bpc"] + RISE_WARNING:
            warnings.append(f"step {step}: validation {m['val_bpc']:.3f} bits/char, {m['val_bpc'] - best['val_bpc']:.2f} "
                            f"above the best so far ({best['val_bpc']:.3f} at step {best['step']}): the learning rate "
                            f"may be too high for this text (try --lr {a.lr / 2:g})")
            if not a.quiet:
                print("warning: " + warnings[-1], file=sys.stderr)
        model.train()
        save_resume()
        return m

    def save_resume():
        tmp = out / "resume.pt.tmp"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "seen": seen,
                    "carried": state,  # the recurrent state the next step starts from (inside a window)
                    "elapsed": time.monotonic() - t0, "history": history, "best": best, "warnings": warnings,
                    "train_cfg": train_cfg, "dropout": model.config["dropout"], "torch_rng": torch.get_rng_state(),
                    "py_rng": random.getstate(), "args": asdict(a)}, tmp)
        os.replace(tmp, out / "resume.pt")

    if not resume:
        save_val_sample(out, [val_text[i * 200:(i + 1) * 200] for i in range(8) if len(val_text) >= (i + 1) * 200]
                        or [val_text], held_out=val_text[:20_000])
        write_json(out / "args.json", asdict(a))
    model.train()
    bar = progress(total, f"train lm ({a.cell}, {a.tokenizer})", a.quiet)
    bar.update(step)
    try:
        while not sched.done(step):
            x, y, fresh = order.batch(step)
            if fresh:
                state = None
            elif state is not None:
                state = tuple(t.detach() for t in state) if isinstance(state, tuple) else state.detach()
            lr = sched.update(step)
            logits, state = model(x, state)
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # Clipping the gradient norm stops the rare exploding step of an RNN from wrecking the weights.
            nn.utils.clip_grad_norm_(model.parameters(), a.clip)
            opt.step()
            step += 1
            seen += y.numel()
            if auto and a.time_budget and step == PROBE_STEPS and "expected_passes" not in train_cfg:
                passes = estimate_passes(a.time_budget, seen, time.monotonic() - t0, len(train_ids))
                model.set_dropout(auto_dropout(passes))
                train_cfg.update(dropout=model.config["dropout"], expected_passes=round(passes, 1))
                if not a.quiet:
                    bar.write(f"about {passes:.0f} passes over the text in the budget: dropout {model.config['dropout']}")
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}", tok_s=f"{seen / (time.monotonic() - t0):.0f}")
            if due(step, time.monotonic() - t0) and not sched.done(step):
                m = validate()
                if not a.quiet:
                    bar.write(f"step {step}: val bits/char {m['val_bpc']:.3f}, per-token perplexity {m['val_ppl']:.2f}")
    except KeyboardInterrupt:
        bar.close()
        save_resume()
        if best is None:  # nothing validated yet: the weights as they are
            validate()
        raise Interrupted(f"interrupted at step {step}: the best checkpoint so far (val bits/char "
                          f"{best['val_bpc']:.3f}, step {best['step']}) is in {out}; continue with "
                          f"`rnnserve train lm --resume {out}`") from None
    bar.close()
    if not history or history[-1]["step"] != step:
        validate()
    seconds = time.monotonic() - t0
    metrics = {"kind": "lm", "val_bpc": best["val_bpc"], "val_loss": best["val_loss"], "val_ppl": best["val_ppl"],
               "tokenizer": tok.type, "vocab_size": tok.vocab_size, "val_split": val_split, "order": a.order,
               "chars_per_token": train_cfg["chars_per_token"], "val_chars": best["val_chars"],
               "best_step": best["step"], "train_tokens": seen, "steps": step, "seconds": round(seconds, 2),
               "tokens_per_s": round(seen / seconds, 1), "dropout": model.config["dropout"],
               "expected_passes": train_cfg.get("expected_passes"), "passes": round(step / per_pass, 2),
               "tokenize_seconds": train_cfg["tokenize_seconds"], "warnings": warnings, "history": history}
    write_json(out / "metrics.json", metrics)
    if a.plot:
        plot_curve(history, a.plot, f"{a.cell} {a.tokenizer}, {Path(a.data[0]).name}")
    return metrics


def plot_curve(history: list[dict], path: str, title: str) -> None:
    """The validation curve: bits/char against seconds, the best point marked."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise D.DataError("--plot needs matplotlib (pip install matplotlib)") from None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs, ys = [h["seconds"] for h in history], [h["val_bpc"] for h in history]
    ax.plot(xs, ys, marker="o")
    b = min(range(len(ys)), key=ys.__getitem__)
    ax.plot([xs[b]], [ys[b]], marker="*", markersize=14, label=f"best {ys[b]:.3f}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("validation bits/char")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- classifier


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    x = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return x, lengths


def length_batches(lengths: list[int], batch_size: int, rng: random.Random | None = None) -> list[list[int]]:
    """Indices in batches: first of texts of one length (no padding, so the classifier skips packing, about
    four times faster on CPU), then what is left over of every length, sorted by length so that batches pad
    little. With `rng`, the texts and the batches are shuffled (training); without, in length order."""
    order = list(range(len(lengths)))
    if rng:
        rng.shuffle(order)
    by_length: dict[int, list[int]] = {}
    for i in order:
        by_length.setdefault(lengths[i], []).append(i)
    batches, rest = [], []
    for n in sorted(by_length):
        group = by_length[n]
        full = len(group) - len(group) % batch_size
        batches += [group[k:k + batch_size] for k in range(0, full, batch_size)]
        rest += group[full:]
    batches += [rest[k:k + batch_size] for k in range(0, len(rest), batch_size)]
    if rng:
        rng.shuffle(batches)
    return batches


@torch.no_grad()
def predict(model: Classifier, seqs: list[list[int]], pad_id: int, batch_size: int = 256) -> list[int]:
    model.eval()
    preds = [0] * len(seqs)
    for idx in length_batches([len(s) for s in seqs], batch_size):
        x, lengths = pad_batch([seqs[i] for i in idx], pad_id)
        for i, p in zip(idx, model(x, lengths).argmax(1).tolist()):
            preds[i] = p
    return preds


def encode_rows(tok: T.Tokenizer, rows, label_ids: dict, max_len: int):
    """Each row's first `max_len` tokens (characters for a char tokenizer); an empty one (spaces to a word
    tokenizer) as the unknown token."""
    filler = [tok.unk_id if tok.unk_id is not None else tok.pad_id]
    seqs = [tok.encode(t)[:max_len] or filler for _, t in rows]
    return seqs, [label_ids[l] for l, _ in rows]


def train_classifier(a: ClassifierArgs) -> dict:
    set_seed(a.seed, a.threads)
    out = Path(a.out)
    rows = D.read_labelled(a.data)
    if a.val_data:
        train_rows, val_rows = rows, D.read_labelled(a.val_data)
    else:
        train_rows, val_rows = D.split(rows, a.val_fraction, a.seed)
    labels = sorted({l for l, _ in train_rows})
    unseen = sorted({l for l, _ in val_rows} - set(labels))
    if unseen:
        raise D.DataError(f"{a.val_data or a.data}: validation labels never seen in training: {unseen}")
    label_ids = {l: i for i, l in enumerate(labels)}
    tok = T.build(a.tokenizer, [t for _, t in train_rows], a.vocab_size, a.min_count)
    xs, ys = encode_rows(tok, train_rows, label_ids, a.max_len)
    vx, vy = encode_rows(tok, val_rows, label_ids, a.max_len)
    model = Classifier(tok.vocab_size, len(labels), a.cell, a.hidden, a.embed, a.dropout, a.layers, tok.pad_id)
    rng = random.Random(a.seed)
    steps_per_epoch = math.ceil(len(xs) / a.batch_size)
    total = a.steps or (round(a.epochs * steps_per_epoch) if a.epochs else None)
    if total is None and a.time_budget is None:
        total = 10 * steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = Schedule(opt, a.lr, total, a.time_budget)
    eval_every = a.eval_every or steps_per_epoch
    lengths = [len(s) for s in xs]
    train_cfg = {**asdict(a), "labels": labels, "vocab_size": tok.vocab_size, "n_train": len(xs)}
    history, best, step, seen, t0 = [], None, 0, 0, time.monotonic()

    def validate():
        nonlocal best
        m = classification_report(vy, predict(model, vx, tok.pad_id), labels)
        m.update(step=step, seconds=round(time.monotonic() - t0, 2))
        history.append({k: m[k] for k in ("step", "seconds", "accuracy", "macro_f1")})
        if best is None or (m["macro_f1"], m["accuracy"]) > (best["macro_f1"], best["accuracy"]):
            best = m
            save_run(out, model, tok, train_cfg)
        model.train()
        return m

    save_val_sample(out, [t[: a.max_len] for _, t in val_rows[:16]], [l for l, _ in val_rows[:16]],
                    held_out=[[l, t[: a.max_len]] for l, t in val_rows[:512]])
    model.train()
    bar = progress(total, f"train classifier ({a.cell}, {a.tokenizer})", a.quiet)
    batches: list[list[int]] = []
    while not sched.done(step):
        if not batches:
            batches = length_batches(lengths, a.batch_size, rng)
        idx = batches.pop()
        x, lens = pad_batch([xs[i] for i in idx], tok.pad_id)
        y = torch.tensor([ys[i] for i in idx])
        lr = sched.update(step)
        loss = nn.functional.cross_entropy(model(x, lens), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        step += 1
        seen += len(idx)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}", ex_s=f"{seen / (time.monotonic() - t0):.0f}")
        if step % eval_every == 0:
            m = validate()
            if not a.quiet:
                bar.write(f"step {step}: val accuracy {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f}")
    bar.close()
    if not history or history[-1]["step"] != step:
        validate()
    seconds = time.monotonic() - t0
    metrics = {"kind": "classifier", "accuracy": best["accuracy"], "macro_f1": best["macro_f1"],
               "labels": labels, "confusion": best["confusion"], "per_class": best["per_class"],
               "n_val": len(vy), "n_train": len(xs), "best_step": best["step"], "steps": step,
               "seconds": round(seconds, 2), "history": history}
    write_json(out / "metrics.json", metrics)
    return metrics


def format_confusion(conf: list[list[int]], labels: list[str]) -> str:
    w = max(6, *(len(l) for l in labels)) + 1
    lines = ["true\\pred".ljust(w) + "".join(l.rjust(w) for l in labels)]
    lines += [labels[i].ljust(w) + "".join(str(v).rjust(w) for v in row) for i, row in enumerate(conf)]
    return "\n".join(lines)
