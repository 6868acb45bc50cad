"""LSTM against GRU (and one vocabulary against another) on the same text and time budget, measured."""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from .train import LMArgs, load_run, train_lm


@torch.no_grad()
def inference_tokens_per_s(model, n: int = 400) -> float:
    """Step-by-step generation speed at batch 1 (one forward call per token).

    Measured with oneDNN off: torch 2.13's oneDNN LSTM kernel is about 6x slower per call at
    batch 1 on this CPU (measured: 911 against 5,627 tokens/s), which would say more about
    that kernel than about the cell."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about TF32 on Intel GPUs when the flag is touched
        with torch.backends.mkldnn.flags(enabled=False):
            return _tokens_per_s(model, n)


def _tokens_per_s(model, n: int) -> float:
    model.eval()
    tok = torch.tensor([[2]])
    state = None
    for _ in range(20):  # warm-up: the first calls pay for allocation and kernel selection
        logits, state = model(tok, state)
    t0 = time.perf_counter()
    for _ in range(n):
        logits, state = model(tok, state)
        tok = logits[:, -1].argmax(-1, keepdim=True)
    return n / (time.perf_counter() - t0)


def compare(base: LMArgs, plot: str | None = None, tokenizers: list[str] = ("char",)) -> list[dict]:
    """Each cell (LSTM, GRU) with each tokenizer, trained on the same text and budget. Bits per character of
    the same held-out text put every vocabulary on one scale; a token carries `chars_per_token` characters,
    so inference speed is given in characters/s too."""
    rows = []
    histories = {}
    for kind in tokenizers:
        for cell in ("lstm", "gru"):
            a = replace(base, cell=cell, tokenizer=kind, out=str(Path(base.out) / f"{cell}-{kind}"))
            m = train_lm(a)
            model, _, _ = load_run(a.out)
            speed = inference_tokens_per_s(model)
            rows.append({"cell": cell, "tokenizer": kind, "vocab_size": m["vocab_size"],
                         "params": sum(p.numel() for p in model.parameters()),
                         "train_tokens_per_s": m["tokens_per_s"], "val_bpc": m["val_bpc"], "val_ppl": m["val_ppl"],
                         "chars_per_token": m["chars_per_token"], "steps": m["steps"],
                         "inference_tokens_per_s": speed, "inference_chars_per_s": speed * m["chars_per_token"]})
            histories[f"{cell.upper()} {kind}"] = m["history"]
    Path(base.out).mkdir(parents=True, exist_ok=True)
    (Path(base.out) / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    if plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, hist in histories.items():
            ax.plot([h["seconds"] for h in hist], [h["val_bpc"] for h in hist], marker="o", label=name)
        ax.set_xlabel("training seconds")
        ax.set_ylabel("validation bits per character")
        ax.set_title("Cells and vocabularies, same data and time budget")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'cell':<6}{'tokens':>7}{'vocab':>7}{'params':>10}{'train tok/s':>13}{'val bpc':>9}{'tok ppl':>9}"
            f"{'chars/tok':>10}{'infer tok/s':>13}{'infer char/s':>14}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['cell'].upper():<6}{r['tokenizer']:>7}{r['vocab_size']:>7,}{r['params']:>10,}"
                     f"{r['train_tokens_per_s']:>13,.0f}{r['val_bpc']:>9.3f}{r['val_ppl']:>9.2f}"
                     f"{r['chars_per_token']:>10.2f}{r['inference_tokens_per_s']:>13,.0f}"
                     f"{r['inference_chars_per_s']:>14,.0f}")
    return "\n".join(lines)
