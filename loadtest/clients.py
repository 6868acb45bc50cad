"""Load-generating clients, run in their own process so they do not share the server's interpreter.

    python -m loadtest.clients stream --url URL --concurrency N --tokens 256 [--model NAME]
    python -m loadtest.clients classify --url URL --concurrency 64 --seconds 10
    python -m loadtest.clients converse --url URL --history-chars 1024 ...

Each prints one JSON object with the measured figures.

The clients use aiohttp: httpx's shared connection pool collapses at high
concurrency (152 requests/s with 64 concurrent connections against a bare
uvicorn "ok" app on this machine, against 8,861 for aiohttp in the same
conditions), so an httpx load generator measures itself, not the server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import aiohttp

PROMPTS = ["The ", "A man ", "Love is ", "Never ", "When the ", "Q: What ", "It is ", "Why do ", "In the ",
           "Your ", "There was ", "Life ", "Every ", "If you ", "One day ", "The best "]


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def session(concurrency: int, timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 4),
                                 timeout=aiohttp.ClientTimeout(total=timeout))


async def timed(request, latencies: list[float]) -> bool:
    """Send one request and read its whole answer; a 200's latency joins `latencies`. Whether it was a 200."""
    t = time.perf_counter()
    async with request as r:
        await r.read()
        ok = r.status == 200
    if ok:
        latencies.append(time.perf_counter() - t)
    return ok


async def one_stream(client: aiohttp.ClientSession, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    ttft, last, gaps, tokens, events, chars = None, None, [], 0, 0, 0
    async with client.post(url + "/generate", json=body) as r:
        if r.status != 200:
            await r.read()
            return {"error": r.status}
        async for raw in r.content:
            if not raw.startswith(b"data: "):
                continue
            data = raw[6:].rstrip(b"\r\n")
            if data == b"[DONE]":
                break
            ev = json.loads(data)
            now = time.perf_counter()
            if "index" in ev:
                events += 1
                chars += len(ev["text"])
                if ttft is None:
                    ttft = now - t0
                else:
                    gaps.append(now - last)
                last = now
            elif "usage" in ev:
                tokens = ev["usage"]["completion_tokens"]
    return {"ttft": ttft, "gaps": gaps, "tokens": tokens, "events": events, "chars": chars,
            "seconds": time.perf_counter() - t0}


async def streams(url: str, concurrency: int, tokens: int, model: str | None, rounds: int, extra: dict | None = None,
                  extra_every: int = 1) -> dict:
    """`extra` (decoding controls, a constraint) goes into the bodies of every `extra_every`-th client's requests."""
    async with session(concurrency, 600) as client:
        async def warm():
            async with client.post(url + "/generate", json={"max_tokens": 4, "stream": False}) as r:
                await r.read()
        await asyncio.gather(*(warm() for _ in range(min(concurrency, 8))))
        async def user(i: int) -> list[dict]:
            # each client streams `rounds` requests back to back (no barrier between clients, as real load)
            out = []
            for k in range(rounds):
                out.append(await one_stream(client, url, {
                    "prompt": PROMPTS[(i + k) % len(PROMPTS)] + str(i), "max_tokens": tokens, "temperature": 1.0,
                    "seed": 1000 * k + i, **({"model": model} if model else {}),
                    **(extra if extra and i % extra_every == 0 else {})}))
            return out

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(user(i) for i in range(concurrency))) for r in rs]
        wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    gaps = [g for r in ok for g in r["gaps"]]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    total, chars = sum(r["tokens"] for r in ok), sum(r["chars"] for r in ok)
    return {"concurrency": concurrency, "requests": len(results), "failures": len(results) - len(ok),
            "tokens": total, "seconds": wall, "tokens_per_s": total / wall, "chars": chars, "chars_per_s": chars / wall,
            "ttft_p50": pct(ttfts, 50), "ttft_p99": pct(ttfts, 99),
            "itl_p50": pct(gaps, 50), "itl_p95": pct(gaps, 95), "itl_p99": pct(gaps, 99),
            "tokens_per_event": total / max(1, sum(r["events"] for r in ok))}


TEXTS = ["The weather is lovely today and we are going to the beach.", "Das Wetter ist heute schön.",
         "El tiempo es estupendo hoy.", "Il tempo oggi è bellissimo.", "O tempo hoje está ótimo.",
         "Сегодня прекрасная погода.", "Dzisiaj jest piękna pogoda.", "Dnes je krásné počasí."]


def read_texts(path: str | None) -> list[str]:
    """The `text` column of a CSV/TSV (e.g. a model's eval_sample.csv), or the built-in sentences."""
    if not path:
        return TEXTS
    from service.labelled import read_labelled  # the CSV/TSV reader `rnnserve eval` uses
    return [text for _, text in read_labelled(Path(path)).rows]


async def classify(url: str, concurrency: int, seconds: float, texts: list[str]) -> dict:
    lat, fails = [], 0
    async with session(concurrency, 60) as client:
        async with client.post(url + "/classify", json={"text": "warm up"}) as r:
            await r.read()
        deadline = time.perf_counter() + seconds

        async def worker(i):
            nonlocal fails
            rng = random.Random(i)
            while time.perf_counter() < deadline:
                if not await timed(client.post(url + "/classify", json={"text": rng.choice(texts)}), lat):
                    fails += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "texts": len(lat), "failures": fails, "texts_per_s": len(lat) / wall,
            "p50": pct(lat, 50), "p99": pct(lat, 99), "mean_chars": sum(map(len, texts)) / len(texts)}


async def converse(url: str, history_chars: list[int], repeats: int) -> list[dict]:
    """Continue a conversation of each history length: through a session vs resending the history."""
    rng = random.Random(0)
    words = "the a of to and in is it you that he was for on are with as his they be at one have this".split()
    out = []
    async with session(4, 120) as client:
        async def post(body: dict) -> dict:
            async with client.post(url + "/generate", json=body) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        for n in history_chars:
            history = ""
            while len(history) < n:
                history += rng.choice(words) + " "
            history = history[:n]
            async with client.post(url + "/sessions", json={}) as r:
                sid = (await r.json())["session_id"]
            await post({"prompt": history, "max_tokens": 1, "stream": False, "session_id": sid})
            t_sess, t_full = [], []
            for k in range(repeats):
                turn = f" turn {k}: what next?"
                t = time.perf_counter()
                await post({"prompt": turn, "max_tokens": 16, "stream": False, "temperature": 0, "session_id": sid})
                t_sess.append(time.perf_counter() - t)
                t = time.perf_counter()
                await post({"prompt": (history + turn)[-8192:], "max_tokens": 16, "stream": False, "temperature": 0})
                t_full.append(time.perf_counter() - t)
            async with client.delete(f"{url}/sessions/{sid}") as r:
                await r.read()
            out.append({"history_chars": n, "session_ms": 1000 * statistics.median(t_sess),
                        "resend_ms": 1000 * statistics.median(t_full)})
    return out


async def turns(url: str, concurrency: int, seconds: float, tokens: int) -> dict:
    """Session turns back to back: each user keeps one conversation going with short turns. The latency of
    a turn includes claiming the session, reading its state, generating and committing the new state."""
    lat, fails = [], 0
    async with session(concurrency, 60) as client:
        async def user(i):
            nonlocal fails
            async with client.post(url + "/sessions", json={}) as r:
                sid = (await r.json())["session_id"]
            while time.perf_counter() < deadline:
                if not await timed(client.post(url + "/generate", json={
                        "prompt": " and", "max_tokens": tokens, "stream": False, "session_id": sid,
                        "temperature": 0}), lat):
                    fails += 1
            async with client.delete(f"{url}/sessions/{sid}") as r:
                await r.read()

        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(user(i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "turns": len(lat), "failures": fails, "turns_per_s": len(lat) / wall,
            "p50": pct(lat, 50), "p99": pct(lat, 99)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["stream", "classify", "converse", "turns"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--texts", help="classify: CSV/TSV whose `text` column is sent (default: 8 short sentences)")
    ap.add_argument("--history-chars", type=int, nargs="+", default=[256, 1024, 4096, 8000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--extra", type=json.loads, help="stream: JSON merged into the request bodies")
    ap.add_argument("--extra-every", type=int, default=1, help="stream: --extra for every K-th client (2: half)")
    a = ap.parse_args(argv)
    if a.mode == "stream":
        res = asyncio.run(streams(a.url, a.concurrency, a.tokens, a.model, a.rounds, a.extra, a.extra_every))
    elif a.mode == "classify":
        res = asyncio.run(classify(a.url, a.concurrency, a.seconds, read_texts(a.texts)))
    elif a.mode == "turns":
        res = asyncio.run(turns(a.url, a.concurrency, a.seconds, a.tokens))
    else:
        res = asyncio.run(converse(a.url, a.history_chars, a.repeats))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
