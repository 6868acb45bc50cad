"""`rnnserve bench`: the service against the hardware (a raw ONNX Runtime loop) and against the naive way
(a PyTorch generate() loop per request behind FastAPI), all measured in one run on this machine.

Writes docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks.png.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest import controls, scaling, variants
from loadtest.measure import REPO, Proc, client, decode_speed, fmt_ms, measured, parallel_ceiling, with_cpu

def raw_ort(artifact: Path, batches: list[int], seconds: float, int8: bool = False) -> dict:
    """The ceiling of the variant the service serves (`int8`: model.int8.onnx), and the other variant's step
    beside it at batch 1 and 64."""
    import onnxruntime as ort
    from service.artifact import load_artifact
    out = {}
    for threads in (1, 2):
        art = load_artifact(artifact, int8=int8, threads=threads)
        for b in batches:
            dt, cores = with_cpu(decode_speed, art, b, seconds)
            out[(threads, b)] = {"threads": threads, "batch": b, "us_per_step": dt * 1e6, "tokens_per_s": b / dt,
                                 "cpu_cores": cores, "tokens_per_core_s": b / dt / cores}
    best = {b: max((out[(t, b)] for t in (1, 2)), key=lambda r: r["tokens_per_s"]) for b in batches}
    # The service's layout: one loop per core, each stepping half the batch with one intra-op thread.
    parallel = {}
    for b in (x for x in batches if x >= 8):
        tps, cores = with_cpu(parallel_ceiling, artifact, b, 2, seconds, int8)
        parallel[b] = {"batch": b, "loops": 2, "tokens_per_s": tps, "cpu_cores": cores, "tokens_per_core_s": tps / cores}
    other = []
    if json.loads((artifact / "model.json").read_text()).get("int8"):
        for b in (1, 64):
            art = load_artifact(artifact, int8=not int8, threads=best[b]["threads"])
            dt = decode_speed(art, b, seconds)
            other.append({"batch": b, "threads": best[b]["threads"], "us_per_step": dt * 1e6,
                          "served_us_per_step": best[b]["us_per_step"]})
    return {"all": list(out.values()), "best": best, "parallel": parallel, "other_variant": other,
            "variant": "int8" if int8 else "float32", "ort_version": ort.__version__}


def classify_model_speed(artifact: Path, seconds: float, threads: int) -> dict:
    """Texts/s of the classifier alone (no server, the worker's own length-bucketed path) at batch 1 and
    64, for each kind of input."""
    from loadtest.clients import read_texts
    from service.artifact import load_artifact
    from service.classifier import classify_texts
    art = load_artifact(artifact, threads=threads)
    out = {}
    for kind, path in CLASSIFY_TEXTS.items():
        texts = read_texts(str(path) if path else None)
        rng = np.random.default_rng(0)
        out[kind] = {}
        for b in (1, 64):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                classify_texts(art, [texts[i] for i in rng.integers(0, len(texts), b)])
                n += b
            out[kind][b] = n / (time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------------- report


def plot(service: list[dict], naive: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for rows, label in ((service, "rnnserve"), (naive, "naive PyTorch + FastAPI")):
        if rows:
            a.plot([r["concurrency"] for r in rows], [r["tokens_per_s"] for r in rows], marker="o", label=label)
            b.plot([r["concurrency"] for r in rows], [r["ttft_p99"] * 1000 for r in rows], marker="o",
                   label=f"{label} TTFT p99")
            b.plot([r["concurrency"] for r in rows], [r["itl_p99"] * 1000 for r in rows], marker="x", ls="--",
                   label=f"{label} inter-event p99")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.set_ylabel("aggregate tokens/s")
    b.set_ylabel("ms")
    b.set_yscale("log")
    a.set_title("throughput")
    b.set_title("latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(quick: bool = False, out_dir: Path = REPO / "docs", model: str = "fortunes") -> dict:
    artifact = REPO / "models" / model
    levels = [1, 8, 64] if quick else [1, 8, 32, 64, 128]
    tokens = "64" if quick else "256"
    t_start = time.time()
    res: dict = {"quick": quick, "machine": {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                                             "python": platform.python_version()},
                 "model": json.loads((artifact / "model.json").read_text())}
    try:
        res["machine"]["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                     if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print("1/7 raw ONNX Runtime decode loop", flush=True)
    from service.artifact import choose_int8
    res["variant"] = choose_int8(res["model"], None)  # what the service serves by default, and why
    res["raw"] = raw_ort(artifact, [1, 8, 32, 64, 128], 0.5 if quick else 2.0, res["variant"][0])
    best_threads = res["raw"]["best"][64]["threads"]
    res["classify_model"] = classify_model_speed(REPO / "models" / "langid", 0.5 if quick else 2.0, best_threads)
    from service.artifact import read_manifest
    res["classifier"] = read_manifest(REPO / "models" / "langid")

    print("2/7 rnnserve, streaming clients", flush=True)
    state = tempfile.mkdtemp(prefix="rnnserve-bench-")  # the bench's sessions never land in the repository
    env = {"RNNSERVE_LOG_LEVEL": "warning", "RNNSERVE_STATE_DIR": state}  # the service's defaults otherwise
    srv = Proc([sys.executable, "-m", "rnnserve", "serve", "--port", "{port}", "--host", "127.0.0.1"], env)
    try:
        rounds = "1" if quick else "6"
        res["idle_worker_rss_mb"] = srv.worker_rss_mb()
        # warm-up (first requests to a fresh server: decoders, arenas, caches), as the other sections do
        client("stream", "--url", srv.url, "--concurrency", "8", "--tokens", "16", "--model", model, "--rounds", "2")
        res["service"] = [measured(srv, "stream", "--url", srv.url, "--concurrency", str(n), "--tokens", tokens,
                                   "--model", model, "--rounds", rounds) for n in levels]
        print("2/7 every language model: tokens/s and characters/s", flush=True)
        res["per_model"] = per_model(srv, tokens, rounds, 0.5 if quick else 2.0)
        print("3/7 classification, batching on", flush=True)
        secs = "5" if quick else "15"
        res["classify_on"] = classify_runs(srv, secs)
        print("4/7 sessions", flush=True)
        rss0 = srv.rss_mb()
        res["sessions"] = {"continue": client("converse", "--url", srv.url, "--repeats", "3" if quick else "7",
                                              "--history-chars", *(["256", "4096"] if quick else
                                                                   ["256", "1024", "4096", "8000"]))}
        res["sessions"].update(session_memory(srv, 500 if quick else 5000, rss0))
    finally:
        srv.stop()
    srv = Proc([sys.executable, "-m", "rnnserve", "serve", "--port", "{port}", "--host", "127.0.0.1"],
               {**env, "RNNSERVE_CLASSIFY_MAX_BATCH": "1", "RNNSERVE_PREFIX_CACHE_MB": "0"})
    try:
        print("3/7 classification, batching off", flush=True)
        res["classify_off"] = classify_runs(srv, secs)
        print("4/7 sessions: resending without the prefix cache", flush=True)
        res["sessions"]["continue_no_cache"] = client("converse", "--url", srv.url, "--repeats",
                                                      "3" if quick else "7", "--history-chars",
                                                      *(["256", "4096"] if quick else ["256", "1024", "4096", "8000"]))
    finally:
        srv.stop()

    print("6/7 worker processes", flush=True)
    res["workers"] = scaling.workers_section([1, 2], [64] if quick else [64, 128], int(tokens), 1 if quick else 2,
                                             model, 0.5 if quick else 2.0)
    print("7/7 session stores and replicas", flush=True)
    stores = {"memory": {"RNNSERVE_SESSIONS": "memory"}, "sqlite (default)": {}}
    if shutil.which("redis-server") and shutil.which("haproxy"):
        res["turns"] = scaling.with_redis(lambda url: scaling.turn_costs({**stores, "redis": {"RNNSERVE_SESSIONS": url}},
                                                                         3 if quick else 10))
        res["replicas"] = scaling.replicas_section([1, 2], 64, int(tokens), 1 if quick else 2, 3 if quick else 10)
    else:
        print("   (no redis-server/haproxy: apt-get install -y redis-server haproxy for the Redis and replica figures)")
        res["turns"] = scaling.turn_costs(stores, 3 if quick else 10)

    print("7/7 decoding controls and structured outputs", flush=True)
    res["controls"] = controls.run(1 if quick else 3, rounds=1 if quick else 4)
    print("7/7 float32 and int8, each against its own ceiling", flush=True)
    res["variants"] = variants.run(1 if quick else 2, model, 0.5 if quick else 2.0, rounds=1 if quick else 6)

    print("5/7 naive peer (PyTorch + FastAPI)", flush=True)
    naive = Proc([sys.executable, "-m", "loadtest.naive_server", str(artifact), "--port", "{port}"])
    try:
        res["naive"] = [measured(naive, "stream", "--url", naive.url, "--concurrency", str(n), "--tokens", tokens)
                        for n in levels]  # one round: the naive peer is slow enough that one is long
    finally:
        naive.stop()
    res["seconds"] = round(time.time() - t_start, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmarks.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    plot(res["service"], res["naive"], out_dir / "benchmarks.png")
    (out_dir / "benchmarks.md").write_text(report(res))
    return res


def per_model(srv: Proc, tokens: str, rounds: str, seconds: float) -> list[dict]:
    """Each bundled language model served at 1 and 64 streams: model tokens/s and the characters/s a user
    sees (a BPE token carries several characters), beside the model's raw ORT ceiling at batch 64."""
    from service.artifact import choose_int8, load_artifact, read_manifest
    rows = []
    for folder in sorted(p for p in (REPO / "models").iterdir() if (p / "model.json").exists()):
        manifest = read_manifest(folder)
        if manifest["kind"] != "lm":
            continue
        int8 = choose_int8(manifest, None)[0]  # the variant the service serves it in
        step = min(decode_speed(load_artifact(folder, int8=int8, threads=t), 64, seconds) for t in (1, 2))
        for n in (1, 64):
            row = measured(srv, "stream", "--url", srv.url, "--concurrency", str(n), "--tokens", tokens,
                           "--model", folder.name, "--rounds", rounds)
            row.update(model=folder.name, variant="int8" if int8 else "float32",
                       tokenizer=manifest.get("tokenizer_type", "char"),
                       vocab_size=manifest["vocab_size"], raw_tokens_per_s_64=64 / step)
            rows.append(row)
    return rows


# Two kinds of input: one-line sentences, and the bundled classifier's held-out sample (real fortune
# entries and snippets in eight languages, 20 to 1,121 characters, mean 79).
CLASSIFY_TEXTS = {"sentences": None, "heldout": REPO / "models" / "langid" / "eval_sample.csv"}


def classify_runs(srv: Proc, secs: str) -> dict:
    out = {}
    for name, path in CLASSIFY_TEXTS.items():
        extra = ["--texts", str(path)] if path else []
        out[name] = measured(srv, "classify", "--url", srv.url, "--concurrency", "64", "--seconds", secs, *extra)
    return out


def store_file_bytes(path: str) -> int:
    """The SQLite store on disk: the database and its write-ahead log."""
    return sum(Path(path + suffix).stat().st_size for suffix in ("", "-wal") if Path(path + suffix).exists())


def session_memory(srv: Proc, n: int, rss0: float) -> dict:
    import httpx
    with httpx.Client(timeout=60) as c:
        info = c.get(srv.url + "/info").json()
        per, db = info["sessions"]["bytes_per_session"], info["store"].get("path")
        disk0 = store_file_bytes(db) if db else 0
        before = srv.rss_mb()
        for i in range(n):
            sid = c.post(srv.url + "/sessions", json={}).json()["session_id"]
            c.post(srv.url + "/generate", json={"prompt": f"hello {i}", "max_tokens": 1, "stream": False,
                                                "session_id": sid})
        after = srv.rss_mb()
        held = c.get(srv.url + "/info").json()["sessions"]
    disk = (store_file_bytes(db) - disk0) if db else None
    return {"held": held["sessions"], "state_bytes_per_session": per, "store_bytes": held["bytes"],
            "rss_delta_mb": after - before, "rss_bytes_per_session": (after - before) * 2**20 / max(1, n),
            "store_file": db, "disk_bytes_per_session": disk / max(1, n) if disk is not None else None}


def ceiling(raw: dict, batch: int) -> dict:
    """The fastest raw ORT layout at this batch (section 1), with its tokens per core-second."""
    options = []
    if batch in raw["best"]:
        b = raw["best"][batch]
        options.append({"tokens_per_s": b["tokens_per_s"], "tokens_per_core_s": b.get("tokens_per_core_s"),
                        "layout": f"1 loop, {b['threads']} thread{'s' if b['threads'] > 1 else ''}"})
    p = raw.get("parallel", {}).get(batch) or raw.get("parallel", {}).get(str(batch))
    if p:
        options.append({"tokens_per_s": p["tokens_per_s"], "tokens_per_core_s": p.get("tokens_per_core_s"),
                        "layout": "2 loops"})
    return max(options, key=lambda o: o["tokens_per_s"])


def report(r: dict) -> str:
    raw = r["raw"]["best"]
    svc = {row["concurrency"]: row for row in r["service"]}
    nai = {row["concurrency"]: row for row in r["naive"]}
    m = r["model"]
    cmd = "rnnserve bench --quick" if r["quick"] else "rnnserve bench"
    lines = ["# Benchmarks\n", f"Produced by `{cmd}` in {r['seconds']:.0f} s on {r['machine']['cores']} cores "
             f"({r['machine']['cpu']}), Python {r['machine']['python']}, onnxruntime {r['raw']['ort_version']}. "
             f"Model: the bundled `fortunes` ({m['cell'].upper()}, {m['layers']} layer, hidden {m['hidden']}, "
             f"vocab {m['vocab_size']}). Every ratio compares figures from this same run. Clients (aiohttp) run in a "
             "separate process on the same 2 cores, so they compete with the server for CPU. The service runs with "
             "its defaults (one engine thread per core, one intra-op thread each) and so serves the "
             f"**{r['raw'].get('variant', 'float32')}** model ({(r.get('variant') or [None, 'float32'])[1]}); "
             "sections 1 and 2 measure that variant.\n",
             "## 1. The ceiling: raw ONNX Runtime decode loop (no server, no sampling)\n",
             "| batch | best threads | µs per step | tokens/s |", "|---|---|---|---|"]
    for b, row in raw.items():
        lines.append(f"| {b} | {row['threads']} | {row['us_per_step']:.0f} | {row['tokens_per_s']:,.0f} |")
    served = r["raw"].get("variant", "float32")
    other = "float32" if served == "int8" else "int8"
    for q in r["raw"].get("other_variant", []):
        lines.append(f"\n{other}, batch {q['batch']}: {q['us_per_step']:.0f} µs per step against "
                     f"{q['served_us_per_step']:.0f} µs in {served} ({q['us_per_step'] / q['served_us_per_step']:.2f}× "
                     f"the {served} step time).")
    par = r["raw"].get("parallel", {})
    if par:
        lines.append("\nTwo loops in parallel, each stepping half the batch with one intra-op thread (how the service "
                     "runs a model on 2 cores): " + ", ".join(f"batch {b} {v['tokens_per_s']:,.0f} tok/s"
                                                              for b, v in par.items()) + ".")
    lines += ["", "All thread counts: " + ", ".join(f"batch {x['batch']}/{x['threads']}t {x['tokens_per_s']:,.0f} tok/s"
                                                    for x in r["raw"]["all"]), "",
              "## 2–3. Streaming generation: rnnserve against the hardware and the naive peer\n",
              f"Each client streams {'1 request' if r['quick'] else '6 requests'} of 256 tokens (64 with --quick), "
              "back to back, at temperature 1 from its own prompt over HTTP/SSE. The **raw ceiling** at a batch is "
              "the fastest raw ORT layout of section 1 (one loop with 1 or 2 intra-op threads, or two loops of one "
              "thread, each stepping half the batch); its tokens per core-second divide its tokens/s by the CPU "
              "cores it used. **CPU efficiency** is the server's tokens per core-second (every process of its "
              "tree: supervisor, workers, classifier) over the ceiling's, in this run.\n",
              "| streams | tokens/s | raw ceiling tok/s (layout) | of the ceiling | server CPU cores | tokens per "
              "server core-s | raw tokens per core-s | **CPU efficiency** | naive tok/s | rnnserve / naive |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for n, s in svc.items():
        nv = nai.get(n)
        c = ceiling(r["raw"], n)
        per_core = s["tokens_per_s"] / max(s["server_cpu_cores"], 1e-9)
        lines.append(
            f"| {n} | {s['tokens_per_s']:,.0f} | {c['tokens_per_s']:,.0f} ({c['layout']}) | "
            f"{s['tokens_per_s'] / c['tokens_per_s']:.2f} | {s['server_cpu_cores']:.2f} | {per_core:,.0f} | "
            f"{c['tokens_per_core_s']:,.0f} | **{per_core / c['tokens_per_core_s']:.2f}** | "
            + (f"{nv['tokens_per_s']:,.0f} | {s['tokens_per_s'] / nv['tokens_per_s']:.1f}× |" if nv else "– | – |"))
    idle = r.get("idle_worker_rss_mb") or []
    lines += ["", "Latency and memory. Inter-event latency is the gap between the SSE events a client receives (an "
              "event carries every token made since the stream's last write: a client behind the model gets "
              "several at once). Server RSS: the peak of the whole tree during the run; per worker: /info's "
              f"figure at the end of the run (idle, before any request: {', '.join(f'{v:.0f}' for v in idle)} MB).\n",
              "| streams | TTFT p50 / p99 ms | inter-event p50 / p99 ms | tokens/event | server RSS peak MB | "
              "RSS per worker MB | naive TTFT p50 / p99 ms |", "|---|---|---|---|---|---|---|"]
    for n, s in svc.items():
        nv = nai.get(n)
        lines.append(f"| {n} | {fmt_ms(s['ttft_p50'])} / {fmt_ms(s['ttft_p99'])} | {fmt_ms(s['itl_p50'])} / "
                     f"{fmt_ms(s['itl_p99'])} | {s['tokens_per_event']:.1f} | {s['server_rss_mb']:.0f} | "
                     f"{', '.join(f'{v:.0f}' for v in s.get('worker_rss_mb') or [])} | "
                     + (f"{fmt_ms(nv['ttft_p50'])} / {fmt_ms(nv['ttft_p99'])} |" if nv else "– |"))
    lines += ["", "![throughput and latency against concurrency](benchmarks.png)", "",
              "Where the targets are missed and why: [performance.md](performance.md).", ""]
    if r.get("per_model"):
        lines += ["### Every bundled language model: tokens/s and characters/s\n",
                  "The same clients, per model. A token is a character for a `char` model and a few characters for "
                  "a `bpe` one; characters/s is what a reader sees. The raw ceiling is the model's decode loop at "
                  "batch 64 (best thread count, one loop), in tokens/s, of the variant served.\n",
                  "| model (variant served) | tokenizer (vocab) | streams | tokens/s | characters/s | chars/token | raw ORT tok/s at 64 "
                  "| TTFT p50 / p99 ms | server CPU cores |", "|---|---|---|---|---|---|---|---|---|"]
        for row in r["per_model"]:
            lines.append(f"| {row['model']} ({row.get('variant', 'float32')}) | {row['tokenizer']} ({row['vocab_size']:,}) | "
                         f"{row['concurrency']} | "
                         f"{row['tokens_per_s']:,.0f} | {row['chars_per_s']:,.0f} | "
                         f"{row['chars'] / max(1, row['tokens']):.2f} | {row['raw_tokens_per_s_64']:,.0f} | "
                         f"{fmt_ms(row['ttft_p50'])} / {fmt_ms(row['ttft_p99'])} | {row['server_cpu_cores']:.2f} |")
        lines.append("")
    lines += ["## 4. Classification: /classify with 64 concurrent clients sending single texts\n",
              f"Model: the bundled `langid` (2-layer bidirectional {r['classifier']['cell'].upper()}, hidden "
              f"{r['classifier']['hidden']}, reading {r['classifier'].get('max_chars') or 400} characters). "
              "*sentences*: eight one-line "
              "sentences; *held-out*: the model's held-out sample (`models/langid/eval_sample.csv`).\n",
              "| texts | mean chars | dynamic batching | texts/s | p50 ms | p99 ms | server CPU cores | failures |",
              "|---|---|---|---|---|---|---|---|"]
    for kind in CLASSIFY_TEXTS:
        for label, key in (("on (max 64, wait 5 ms)", "classify_on"), ("off (max batch 1)", "classify_off")):
            c = r[key][kind]
            lines.append(f"| {kind} | {c['mean_chars']:.0f} | {label} | {c['texts_per_s']:,.0f} | {fmt_ms(c['p50'])} | "
                         f"{fmt_ms(c['p99'])} | {c['server_cpu_cores']:.2f} | {c['failures']} |")
    lines.append("\nBatching on / off: " + ", ".join(
        f"{kind} **{r['classify_on'][kind]['texts_per_s'] / r['classify_off'][kind]['texts_per_s']:.1f}×**"
        for kind in CLASSIFY_TEXTS) + " the throughput.\n")
    if "classify_model" in r:
        cm = r["classify_model"]
        lines.append("The model alone (`session.run`, no server), texts/s by batch size: " + "; ".join(
            f"{kind}: " + ", ".join(f"batch {b} {v:,.0f}" for b, v in rows.items()) for kind, rows in cm.items())
            + ". This bounds what batching can gain.\n")
    ses = r["sessions"]
    lines += ["## 5. Sessions\n",
              f"Held {ses['held']:,} sessions: recurrent state "
              f"{', '.join(f'{v:,} bytes ({k})' for k, v in ses['state_bytes_per_session'].items())} each "
              f"(store total {ses['store_bytes']:,} bytes, counted exactly by the store); "
              + (f"in the default SQLite store they take {ses['disk_bytes_per_session']:,.0f} bytes each on disk "
                 f"(state with its header, row and index; the WAL included), the server's RSS moved "
                 f"{ses['rss_delta_mb']:+.1f} MB.\n" if ses.get("disk_bytes_per_session") is not None else
                 f"server RSS grew {ses['rss_delta_mb']:.1f} MB, {ses['rss_bytes_per_session']:,.0f} bytes per session "
                 "including bookkeeping.\n"),
              "Continuing a conversation (16 new tokens after a short new turn), median latency: through a session, "
              "and resending the whole history as a stateless client does, with the prefix-state cache (the "
              "default; the first resend of each history is a miss, the median is a hit) and without it (a second "
              "server, `RNNSERVE_PREFIX_CACHE_MB=0`):\n",
              "| history chars | through the session (ms) | resending, prefix cache on (ms) | resending, cache off (ms) "
              "| off / on |", "|---|---|---|---|---|"]
    off = {row["history_chars"]: row for row in ses.get("continue_no_cache", [])}
    for row in ses["continue"]:
        o = off.get(row["history_chars"])
        lines.append(f"| {row['history_chars']:,} | {row['session_ms']:.1f} | {row['resend_ms']:.1f} | "
                     + (f"{o['resend_ms']:.1f} | {o['resend_ms'] / row['resend_ms']:.1f}× |" if o else "– | – |"))
    lines.append("")
    if "workers" in r:
        lines += scaling.report_workers(r["workers"])
    if "turns" in r:
        lines += scaling.report_turns(r["turns"])
    if "replicas" in r:
        lines += scaling.report_replicas(r["replicas"])
    if "controls" in r:
        lines += ["## Decoding controls and structured outputs\n", controls.report(r["controls"]), ""]
    if "variants" in r:
        lines += ["## float32 and int8, each against its own ceiling\n",
                  "The same load on a server of each variant (`RNNSERVE_INT8=0`, `=1`), interleaved, "
                  f"{len(r['variants']['runs']) // 2} run(s) each, medians; each ceiling is two raw decode loops of "
                  "that variant (the service's layout).\n", variants.table(r["variants"]), ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(prog="rnnserve bench")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(REPO / "docs"))
    a = ap.parse_args(argv)
    run(a.quick, Path(a.out))


if __name__ == "__main__":
    main()
