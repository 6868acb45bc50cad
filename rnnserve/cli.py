"""The `rnnserve` command line.

Offline commands (train, sample, compare, export) need the `train` extra
(torch); eval and serve need only the runtime (onnxruntime). Each command
imports what it needs when it runs, so `rnnserve serve` never loads torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  rnnserve train lm --data input.txt --out runs/lm --time-budget 120
  rnnserve sample runs/lm --prompt "The " --max-tokens 200 --temperature 0.8
  rnnserve export runs/lm --out artifacts/lm
  rnnserve eval artifacts/lm --data held_out.txt
  rnnserve serve --model mylm=artifacts/lm
"""


IMPORT_EXAMPLES = """\
examples:
  rnnserve import lm --state-dict lm.pt --tokenizer vocab.json --out artifacts/mylm
  rnnserve import lm --state-dict lm.pt --tokenizer vocab.json --bos-text $'\\n' --check-text held_out.txt --out a/lm
  rnnserve import classifier --state-dict clf.pt --tokenizer vocab.txt --labels neg,pos --out artifacts/sentiment
  rnnserve import lm --onnx theirs.onnx --tokenizer tokenizer.json --rename input_ids=tokens,h=h0,h_out=hn --out a/x
"""


class UserError(Exception):
    """Raised for problems the user can fix; printed as one line, exit code 2."""


def add_train_common(p: argparse.ArgumentParser, lm: bool) -> None:
    p.add_argument("--out", required=not lm, metavar="RUN_DIR",
                   help="folder for checkpoint.pt, tokenizer.json, metrics.json" + (" (required unless --resume)" if lm else ""))
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm", help="recurrent cell (default: lstm)")
    p.add_argument("--layers", type=int, default=1 if lm else 2, help="recurrent layers (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=448 if lm else 128, help="hidden units per layer (default: %(default)s)")
    p.add_argument("--embed", type=int, default=None if lm else 64,
                   help="embedding size (default: " + ("64 for char, 256 for bpe and word)" if lm else "64)"))
    p.add_argument("--tokenizer", choices=["char", "bpe", "word"], default="char",
                   help="the vocabulary: char (one token per character), bpe (byte-level BPE trained with the "
                        "`tokenizers` library on the training split: any text encodes, about 3-4 characters a "
                        "token) or word (whitespace-separated words; rarer ones become <unk>) (default: char)")
    p.add_argument("--vocab-size", type=int, default=None, metavar="N",
                   help="bpe/word: tokens in the vocabulary (default: 1024 for bpe, at most 16384 for word)")
    p.add_argument("--min-count", type=int, default=None, metavar="N",
                   help="fewest times a character (char), merge (bpe) or word (word) must occur in the training "
                        f"text to enter the vocabulary (default: {'1 for char, ' if lm else ''}2)")
    if lm:
        p.add_argument("--dropout", type=float, default=None,
                       help="dropout between layers and before the output layer (default: 0.25 when the run will "
                            "read the text more than 8 times, which would over-fit it, else 0)")
    else:
        p.add_argument("--dropout", type=float, default=0.3,
                       help="dropout between layers and before the output layer (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32 if lm else 64, help="sequences per batch (default: %(default)s)")
    p.add_argument("--lr", type=float, default=6e-3 if lm else 2e-3, help="peak Adam learning rate (default: %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="stop after this many optimiser steps")
    g.add_argument("--epochs", type=float, help="stop after this many passes over the training data")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop cleanly when this many seconds are spent (evaluates and saves first)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and batches (default: 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--eval-every", type=int, default=0, metavar="STEPS",
                   help="validate every N steps (default: once per epoch, and at the end)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_chat_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat-template", metavar="FILE",
                   help="language model: the Jinja template /v1/chat/completions renders the messages with (messages, "
                        "add_generation_prompt, bos_token, eos_token; run in a sandbox); default: plain "
                        "'User: ...' / 'Assistant:' lines")
    p.add_argument("--chat-stop", action="append", metavar="TEXT",
                   help="language model: where an assistant's reply ends, repeatable (default with the default "
                        "template: a newline and 'User:')")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="rnnserve",
        description="Train LSTM/GRU text models, export them to ONNX and serve them over HTTP.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # train
    tr = sub.add_parser("train", help="train a language model or a classifier (needs the train extra)",
                        description="Train a model from local files. Writes RUN_DIR/checkpoint.pt (best "
                                    "validation score), tokenizer.json and metrics.json.")
    trs = tr.add_subparsers(dest="what", required=True, metavar="WHAT")
    lm = trs.add_parser("lm", help="language model (characters, BPE or words) on UTF-8 text files",
                        description="Train a language model on one or more UTF-8 text files. The last 5%% of a "
                                    "continuous text is held out for validation (its contiguous tail); Debian "
                                    "fortune files (entries between lines holding only %%) are read entry by "
                                    "entry and 5%% of the entries are held out at random. Validation reports "
                                    "bits per character of the held-out text, whatever the tokenizer, and "
                                    "per-token perplexity.")
    lm.add_argument("--data", nargs="+", metavar="FILE", help="UTF-8 text file(s) (required unless --resume)")
    lm.add_argument("--resume", metavar="RUN_DIR",
                    help="continue an interrupted run (Ctrl-C, a crash) from its last saved step: the same settings, "
                         "batches and optimizer state, the rest of its budget")
    lm.add_argument("--order", choices=["windows", "contiguous"], default="windows",
                    help="how batches read the text: windows at random places, the state carried inside each "
                         "(default), or contiguous rows in lockstep (docs/models.md)")
    lm.add_argument("--window", type=int, default=4, metavar="CHUNKS",
                    help="--order windows: --seq-len chunks read in a row with the state carried (default: 4)")
    lm.add_argument("--plot", metavar="FILE.png", help="draw the validation curve (needs matplotlib)")
    lm.add_argument("--format", choices=["auto", "text", "fortune"], default="auto",
                    help="how to split the files into documents (default: auto-detect fortune files)")
    lm.add_argument("--seq-len", type=int, default=64, help="tokens per backprop-through-time chunk (default: 64)")
    lm.add_argument("--val-split", choices=["tail", "shuffle"], default=None,
                    help="hold out the text's contiguous tail, or documents at random (default: tail for a "
                         "continuous text, shuffle for fortune entries)")
    add_train_common(lm, lm=True)
    cl = trs.add_parser("classifier", help="text classifier on a labelled CSV/TSV file",
                        description="Train a bidirectional 2-layer LSTM/GRU text classifier on a CSV or TSV "
                                    "file with `label` and `text` columns. Reports accuracy, macro-F1, "
                                    "per-class precision/recall and the confusion matrix.")
    cl.add_argument("--data", required=True, metavar="FILE", help="CSV/TSV with label and text columns")
    cl.add_argument("--val-data", metavar="FILE", help="separate validation CSV/TSV (default: hold out 10%% of --data)")
    cl.add_argument("--max-len", type=int, default=400,
                    help="characters of each text read in training (tokens with --tokenizer bpe|word); the service "
                         "reads a longer text in up to 4 windows of this length (default: 400)")
    add_train_common(cl, lm=False)

    # sample
    sp = sub.add_parser("sample", help="print text sampled from a trained language model (needs the train extra)",
                        description="Generate text from a run folder's checkpoint, carrying the RNN state "
                                    "token by token.")
    sp.add_argument("run_dir", metavar="RUN_DIR")
    sp.add_argument("--prompt", default="", help="text to start from (default: start of a document)")
    sp.add_argument("--max-tokens", type=int, default=300)
    sp.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    sp.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    sp.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    sp.add_argument("--seed", type=int, default=None)

    # compare
    cp = sub.add_parser("compare", help="train an LSTM and a GRU (per tokenizer) on one budget and compare them",
                        description="Train an LSTM and a GRU language model, with each tokenizer asked for, on "
                                    "the same text with the same time budget and print parameters, training "
                                    "tokens/s, validation bits/char (one scale for every vocabulary), per-token "
                                    "perplexity and inference tokens/s and characters/s.")
    cp.add_argument("--data", nargs="+", required=True, metavar="FILE")
    cp.add_argument("--time-budget", type=float, required=True, metavar="SECONDS", help="per model")
    cp.add_argument("--out", default="runs/compare",
                    help="where the runs go, a folder per cell and tokenizer (default: runs/compare)")
    cp.add_argument("--plot", metavar="FILE.png", help="draw the validation curves (needs matplotlib)")
    cp.add_argument("--tokenizers", default="char", metavar="KINDS",
                    help="comma-separated tokenizers to train each cell with, e.g. char,bpe (default: char)")
    cp.add_argument("--layers", type=int, default=1)
    cp.add_argument("--hidden", type=int, default=448)
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--threads", type=int, default=None)
    cp.add_argument("--quiet", action="store_true")

    # export
    ex = sub.add_parser("export", help="turn a run folder into an ONNX artifact (needs the train extra)",
                        description="Export RUN_DIR to ARTIFACT_DIR (model.onnx, tokenizer.json, model.json) "
                                    "with explicit recurrent state and native ONNX LSTM/GRU operators. "
                                    "Fails, writing nothing, if ONNX Runtime and PyTorch disagree by more "
                                    "than 1e-4.")
    ex.add_argument("run_dir", metavar="RUN_DIR")
    ex.add_argument("--out", required=True, metavar="ARTIFACT_DIR")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    ex.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx (a language model: int8 per row, "
                    "exact across batches; its cost in bits/char on held-out text recorded in model.json)")
    ex.add_argument("--force", action="store_true", help="replace ARTIFACT_DIR if it exists")
    add_chat_flags(ex)

    # import
    im = sub.add_parser("import", help="take in a model trained elsewhere: a PyTorch state dict or an ONNX graph",
                        description="Make an artifact of a model trained outside rnnserve. A state dict "
                                    "(torch.save(model.state_dict(), path); read with weights_only=True, so no "
                                    "pickled code runs) of the textbook shape Embedding -> nn.LSTM|nn.GRU -> "
                                    "Linear, whatever its attribute names: the architecture is read off the "
                                    "tensors, the weights are rebuilt in rnnserve's own classes and exported with "
                                    "the parity check of `rnnserve export`. Or an ONNX graph, checked against the "
                                    "artifact contract (docs/artifact.md) and by behaviour. A refused import "
                                    "writes nothing and says every reason.",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=IMPORT_EXAMPLES)
    ims = im.add_subparsers(dest="what", required=True, metavar="WHAT")
    for what, text in (("lm", "a language model: Embedding -> LSTM|GRU -> Linear over the vocabulary"),
                       ("classifier", "a classifier: Embedding -> bidirectional LSTM|GRU -> Linear reading the last "
                                      "layer's final forward and backward states")):
        ip = ims.add_parser(what, help=text, description=f"Import {text}.")
        src = ip.add_mutually_exclusive_group(required=True)
        src.add_argument("--state-dict", metavar="FILE.pt", help="a torch.save(model.state_dict()) file")
        src.add_argument("--onnx", metavar="FILE.onnx", help="an ONNX graph exported elsewhere: with its state as "
                         "inputs and outputs, or stateless (LSTM/GRU/RNN nodes from zeros, a plain torch.onnx.export), "
                         "which is rewritten to carry its state and proven equal")
        ip.add_argument("--tokenizer", required=True, metavar="TOK",
                        help="the vocabulary: a `tokenizers` tokenizer.json, a JSON {token: id} map, or a text file "
                             "with one token a line (id = line number). All single characters (besides <pad>, "
                             "<unk> and other names in angle brackets): a character vocabulary; else word level")
        ip.add_argument("--out", required=True, metavar="ARTIFACT_DIR")
        if what == "lm":
            ip.add_argument("--bos-text", metavar="TEXT",
                            help="text fed before every fresh prompt (e.g. a newline); without it the model is fed "
                                 "exactly the prompt's ids, and an empty prompt is refused (422)")
            add_chat_flags(ip)
        else:
            ip.add_argument("--labels", required=True, metavar="L1,L2,...|FILE",
                            help="class names in logit order, comma-separated or a file with one a line")
            ip.add_argument("--max-len", type=int, default=None, metavar="N",
                            help="what the model reads at once: characters for a character vocabulary, else tokens; "
                                 "a longer text is read in up to 4 windows (default: 400, as `train` uses)")
        ip.add_argument("--unk-token", metavar="TOKEN", help="the unknown token (default: <unk> where it appears)")
        ip.add_argument("--pad-token", metavar="TOKEN", help="the padding token (default: <pad> where it appears)")
        ip.add_argument("--rename", metavar="OLD=NEW,...",
                        help="--onnx: rename graph inputs/outputs to the contract's names (tokens, h0, c0, logits, hn, "
                             "cn; tokens, lengths, logits for a classifier)")
        ip.add_argument("--check-text", metavar="FILE",
                        help="also measure the artifact on this file and record it in the manifest: bits/char on a "
                             "text (lm), accuracy on a labelled CSV/TSV (classifier)")
        ip.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx, its cost measured on "
                        "--check-text (else on text the float32 model writes itself) and recorded in model.json")
        ip.add_argument("--force", action="store_true", help="replace ARTIFACT_DIR if it exists")

    # eval
    ev = sub.add_parser("eval", help="evaluate an exported artifact with onnxruntime alone",
                        description="Evaluate an artifact with onnxruntime (no torch): bits per char on a "
                                    "text file for a language model; accuracy, macro-F1, per-class recall "
                                    "and the confusion matrix on a labelled CSV/TSV for a classifier.")
    ev.add_argument("artifact", metavar="ARTIFACT_DIR")
    ev.add_argument("--data", required=True, metavar="FILE")
    ev.add_argument("--int8", action="store_true", help="evaluate model.int8.onnx instead of model.onnx")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--limit", type=int, default=None, help="use only the first N rows / characters")
    ev.add_argument("--streams", type=int, default=16, metavar="N",
                    help="language model: read the text as N parallel streams, each from its own start (default 16); "
                         "1 reads it as one text, as the service scores a prompt (/v1/completions echo + logprobs)")
    ev.add_argument("--first-chars", type=int, default=None, metavar="N",
                    help="classifier: keep only the first N characters of each text (how short inputs fare)")
    ev.add_argument("--compare-langid", action="store_true",
                    help="classifier: also score langid.py (PyPI langid, restricted to the model's labels) on the "
                         "same texts")

    from service.cli import add_serve_parser  # torch-free
    add_serve_parser(sub)

    bp = sub.add_parser("bench", help="measure the service against raw ONNX Runtime and a naive PyTorch server",
                        description="Benchmark the bundled fortunes model: a raw ONNX Runtime decode loop, the "
                                    "service under 1-128 concurrent streams, a naive PyTorch+FastAPI peer, "
                                    "/classify with batching on and off, and sessions. Writes docs/benchmarks.md, "
                                    ".json and .png. Needs the train and dev extras (torch for the naive peer).")
    bp.add_argument("--quick", action="store_true", help="fewer levels and shorter runs (under 2 minutes)")
    bp.add_argument("--out", default=None, metavar="DIR", help="where to write the report (default: docs/)")

    lp = sub.add_parser("loadtest", help="run the locust scenarios headless and save CSV/HTML reports",
                        description="Load-test the service with locust (streaming and whole generation, "
                                    "classification, multi-turn sessions, chat clients that resend their "
                                    "conversations). Starts a local server when --host is not given. Writes the "
                                    "server's prefix-cache hit rate and memory to OUT/server.json. Exits 1 if any "
                                    "request failed.")
    lp.add_argument("--users", type=int, default=10, help="concurrent locust users (default 10)")
    lp.add_argument("--duration", default="60s", help="how long, e.g. 20s, 5m (default 60s)")
    lp.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default: all at once)")
    lp.add_argument("--host", default=None, help="a running server's URL (default: start one)")
    lp.add_argument("--out", default="build/loadtest", help="report folder (default build/loadtest)")
    lp.add_argument("--only", nargs="+", metavar="CLASS", help="only these locust user classes (StreamingUser, "
                    "WholeUser, ClassifyUser, SessionUser, ChatUser), e.g. --only ChatUser")
    return ap


def _lm_args(a):
    from export.train import LMArgs
    return LMArgs(data=a.data, out=a.out, cell=a.cell, layers=a.layers, hidden=a.hidden, embed=a.embed,
                  dropout=a.dropout, seq_len=a.seq_len, batch_size=a.batch_size, lr=a.lr, steps=a.steps,
                  epochs=a.epochs, time_budget=a.time_budget, seed=a.seed, threads=a.threads,
                  eval_every=a.eval_every, format=a.format, tokenizer=a.tokenizer, vocab_size=a.vocab_size,
                  min_count=a.min_count, val_split=a.val_split or "auto", quiet=a.quiet, order=a.order,
                  window=a.window, plot=a.plot)


def cmd_train(a) -> None:
    from export import train as T
    if a.what == "lm":
        if a.resume:
            args_file = Path(a.resume) / "args.json"
            if not (Path(a.resume) / "resume.pt").exists() or not args_file.exists():
                raise UserError(f"--resume {a.resume}: not a run folder with a saved state (resume.pt, args.json)")
            if a.data or a.out:
                raise UserError("--resume takes the run's own settings: give no --data or --out with it")
            args = T.LMArgs(**{**json.loads(args_file.read_text()), "quiet": a.quiet})
            resume = True
        elif not (a.data and a.out):
            raise UserError("train lm: give --data FILE... and --out RUN_DIR (or --resume RUN_DIR)")
        else:
            args, resume = _lm_args(a), False
        try:
            m = T.train_lm(args, resume=resume)
        except T.Interrupted as e:
            print(str(e), file=sys.stderr)
            raise SystemExit(130) from None
        for w in m["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        a.out = args.out
        print(f"best val bits/char {m['val_bpc']:.3f} on the held-out {m['val_split']} ({m['val_chars']:,} chars; "
              f"per-token perplexity {m['val_ppl']:.2f}, {m['tokenizer']} vocabulary of {m['vocab_size']:,}, "
              f"{m['chars_per_token']:.2f} chars/token) at step {m['best_step']}; {m['train_tokens']:,} training "
              f"tokens in {m['seconds']:.0f}s; saved to {a.out}")
    else:
        args = T.ClassifierArgs(data=a.data, out=a.out, cell=a.cell, hidden=a.hidden, embed=a.embed,
                                dropout=a.dropout, layers=a.layers, batch_size=a.batch_size, lr=a.lr,
                                steps=a.steps, epochs=a.epochs, time_budget=a.time_budget, seed=a.seed,
                                threads=a.threads, max_len=a.max_len, eval_every=a.eval_every,
                                val_data=a.val_data, tokenizer=a.tokenizer, vocab_size=a.vocab_size,
                                min_count=2 if a.min_count is None else a.min_count, quiet=a.quiet)
        m = T.train_classifier(args)
        print(f"best val accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} on {m['n_val']} rows "
              f"(step {m['best_step']}, {m['seconds']:.0f}s); saved to {a.out}")
        print(T.format_confusion(m["confusion"], m["labels"]))


def cmd_sample(a) -> None:
    from export.train import load_run
    model, tok, _ = load_run(a.run_dir)
    if model.config["kind"] != "lm":
        raise UserError(f"{a.run_dir}: holds a classifier; sample needs a language model")
    ids = tok.encode(a.prompt or "\n")  # a fresh text starts after a newline, a document boundary
    if not ids:
        raise UserError("--prompt: this vocabulary has no newline to start a text from (word level); give a prompt")
    guard = tok.utf8_guard()
    out = model.generate(ids, a.max_tokens, a.temperature, a.top_k, a.top_p, a.seed, guard=guard,
                         pad_id=tok.pad_id)  # byte-level output kept valid UTF-8, as the server keeps it
    if guard is not None:  # a character still unfinished at --max-tokens is left out, as a stream leaves it
        from service.utf8 import utf8_tail
        data = b"".join(tok.token_bytes(i) for i in out)
        print(a.prompt + data[:len(data) - len(utf8_tail(data))].decode("utf-8"))
        return
    print(a.prompt + tok.decode(out))


def cmd_compare(a) -> None:
    from export.compare import compare, format_table
    from export.train import LMArgs
    base = LMArgs(data=a.data, out=a.out, layers=a.layers, hidden=a.hidden, time_budget=a.time_budget,
                  seed=a.seed, threads=a.threads, quiet=a.quiet)
    kinds = [k.strip() for k in a.tokenizers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ("char", "bpe", "word")]
    if not kinds or unknown:
        raise UserError(f"--tokenizers: {', '.join(unknown) or 'nothing given'}: choose from char, bpe, word")
    print(format_table(compare(base, a.plot, kinds)))


def cmd_export(a) -> None:
    from export.onnx_export import chat_format, export
    m = export(a.run_dir, a.out, a.opset, a.quantize, a.force, chat_format(a.chat_template, a.chat_stop))
    print(f"exported {m['kind']} ({m['cell']}, {m['layers']} layer(s), hidden {m['hidden']}) to {a.out}: "
          f"ops {','.join(sorted(set(m['recurrent_ops'])))}, parity {m['parity']:.2e}")
    print_int8(m)


def print_int8(m: dict) -> None:
    q = m.get("int8")
    if not q:
        return
    cost = q.get("quality") or {}
    how = {"bits_per_char": f"{cost.get('delta', 0):+.4f} bits/char ({cost.get('float32')} -> {cost.get('int8')})",
           "accuracy": f"accuracy {cost.get('float32')} -> {cost.get('int8')}",
           "agreement": f"agrees with float32 on {cost.get('agreement', 0):.1%}"}.get(cost.get("metric"), "")
    parity = f", parity {q['parity']:.3g}" if q.get("parity") is not None else ""
    print(f"int8 ({q.get('method', 'onnxruntime-dynamic')}{', exact across batches' if q.get('batch_exact') else ''}): "
          f"{q['onnx_bytes']:,} bytes (float32 {m['onnx_bytes']:,}){parity}; {how} on {cost.get('text', 'held-out text')}")


def cmd_import(a) -> None:
    from export.importer import ImportArgs, run_import
    m = run_import(ImportArgs(kind=a.what, tokenizer=a.tokenizer, out=a.out, state_dict=a.state_dict, onnx=a.onnx,
                              rename=a.rename, labels=getattr(a, "labels", None), max_len=getattr(a, "max_len", None),
                              bos_text=getattr(a, "bos_text", None), unk_token=a.unk_token, pad_token=a.pad_token,
                              check_text=a.check_text, force=a.force, quantize=a.quantize,
                              chat_template=getattr(a, "chat_template", None), chat_stop=getattr(a, "chat_stop", None)))
    check = (f"parity {m['parity']:.2e}" if m["parity"] is not None else
             ", ".join(f"{k.replace('_', ' ')} {v:.2e}" for k, v in m.get("checks", {}).items()))
    print(f"imported {m['kind']} ({m['cell']}, {m['layers']} layer(s), hidden {m['hidden']}, {m['tokenizer_type']} "
          f"vocabulary of {m['vocab_size']:,}) to {a.out}: {check}")
    if m["metrics"].get("check_text"):
        r = m["metrics"]
        print(f"on {r['check_text']}: " + (f"{r['bpc']:.4f} bits/char" if m["kind"] == "lm" else
                                          f"accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}"))
    print_int8(m)


def cmd_eval(a) -> None:
    from service.evaluate import evaluate, format_report
    report = evaluate(a.artifact, a.data, int8=a.int8, limit=a.limit, first_chars=a.first_chars,
                      compare_langid=a.compare_langid, streams=a.streams)
    print(json.dumps(report, indent=2, ensure_ascii=False) if a.json else format_report(report))


def cmd_bench(a) -> None:
    from loadtest.bench import run
    from loadtest.measure import REPO
    from pathlib import Path
    res = run(a.quick, Path(a.out) if a.out else REPO / "docs")
    print((Path(a.out) if a.out else REPO / "docs") / "benchmarks.md", f"written in {res['seconds']:.0f}s")


def cmd_loadtest(a) -> None:
    from pathlib import Path
    from loadtest.run import run
    code = run(a.users, a.duration, a.host, Path(a.out), a.spawn_rate, only=a.only)
    if code:
        raise SystemExit(code)


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    handlers = {"train": cmd_train, "sample": cmd_sample, "compare": cmd_compare, "export": cmd_export,
                "import": cmd_import,
                "eval": cmd_eval, "bench": cmd_bench, "loadtest": cmd_loadtest}
    from service.cli import serve_handlers
    handlers.update(serve_handlers())
    try:
        handlers[a.command](a)
    except ModuleNotFoundError as e:
        if e.name in ("torch", "onnx", "tqdm"):
            print(f"rnnserve {a.command}: needs the training extra ({e.name} is missing): "
                  f"pip install -e '.[train]'", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # user-facing errors from both halves share one shape
        if type(e).__name__ in ("UserError", "DataError", "ExportError", "ArtifactError", "LabelledFileError",
                                "TokenizerError", "EncodeError", "ImportRefused"):
            print(f"rnnserve {a.command}: error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
