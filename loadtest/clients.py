"""Load-generating clients, run in their own process so they do not share the server's interpreter.

    python -m loadtest.clients stream --url URL --concurrency N --tokens 256 [--model NAME]
    python -m loadtest.clients classify --url URL --concurrency 64 --seconds 10
    python -m loadtest.clients converse --url URL --history-chars 1024 ...

Each prints one JSON object with the measured figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time

import httpx

PROMPTS = ["The ", "A man ", "Love is ", "Never ", "When the ", "Q: What ", "It is ", "Why do ", "In the ",
           "Your ", "There was ", "Life ", "Every ", "If you ", "One day ", "The best "]


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


async def one_stream(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    ttft, last, gaps, tokens, events = None, None, [], 0, 0
    async with client.stream("POST", url + "/generate", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"error": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            ev = json.loads(data)
            now = time.perf_counter()
            if "index" in ev:
                events += 1
                if ttft is None:
                    ttft = now - t0
                else:
                    gaps.append(now - last)
                last = now
            elif "usage" in ev:
                tokens = ev["usage"]["completion_tokens"]
    return {"ttft": ttft, "gaps": gaps, "tokens": tokens, "events": events, "seconds": time.perf_counter() - t0}


async def streams(url: str, concurrency: int, tokens: int, model: str | None, rounds: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        # warm-up: one short request per connection slot
        await asyncio.gather(*(client.post(url + "/generate", json={"max_tokens": 4, "stream": False})
                               for _ in range(min(concurrency, 8))))
        t0 = time.perf_counter()
        results = []
        for k in range(rounds):
            bodies = [{"prompt": PROMPTS[(i + k) % len(PROMPTS)] + str(i), "max_tokens": tokens,
                       "temperature": 1.0, "seed": 1000 * k + i, **({"model": model} if model else {})}
                      for i in range(concurrency)]
            results += await asyncio.gather(*(one_stream(client, url, b) for b in bodies))
        wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    gaps = [g for r in ok for g in r["gaps"]]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    total = sum(r["tokens"] for r in ok)
    return {"concurrency": concurrency, "requests": len(results), "failures": len(results) - len(ok),
            "tokens": total, "seconds": wall, "tokens_per_s": total / wall,
            "ttft_p50": pct(ttfts, 50), "ttft_p99": pct(ttfts, 99),
            "itl_p50": pct(gaps, 50), "itl_p95": pct(gaps, 95), "itl_p99": pct(gaps, 99),
            "tokens_per_event": total / max(1, sum(r["events"] for r in ok))}


TEXTS = ["The weather is lovely today and we are going to the beach.", "Das Wetter ist heute schön.",
         "El tiempo es estupendo hoy.", "Il tempo oggi è bellissimo.", "O tempo hoje está ótimo.",
         "Сегодня прекрасная погода.", "Dzisiaj jest piękna pogoda.", "Dnes je krásné počasí."]


async def classify(url: str, concurrency: int, seconds: float) -> dict:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    lat, fails = [], 0
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await client.post(url + "/classify", json={"text": "warm up"})
        deadline = time.perf_counter() + seconds

        async def worker(i):
            nonlocal fails
            rng = random.Random(i)
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                r = await client.post(url + "/classify", json={"text": rng.choice(TEXTS)})
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t)
                else:
                    fails += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "texts": len(lat), "failures": fails, "texts_per_s": len(lat) / wall,
            "p50": pct(lat, 50), "p99": pct(lat, 99)}


async def converse(url: str, history_chars: list[int], repeats: int) -> list[dict]:
    """Continue a conversation of each history length: through a session vs resending the history."""
    rng = random.Random(0)
    words = "the a of to and in is it you that he was for on are with as his they be at one have this".split()
    out = []
    async with httpx.AsyncClient(timeout=120) as client:
        for n in history_chars:
            history = ""
            while len(history) < n:
                history += rng.choice(words) + " "
            history = history[:n]
            sid = (await client.post(url + "/sessions", json={})).json()["session_id"]
            await client.post(url + "/generate", json={"prompt": history, "max_tokens": 1, "stream": False,
                                                       "session_id": sid})
            t_sess, t_full = [], []
            for k in range(repeats):
                turn = f" turn {k}: what next?"
                t = time.perf_counter()
                r = await client.post(url + "/generate", json={"prompt": turn, "max_tokens": 16, "stream": False,
                                                               "temperature": 0, "session_id": sid})
                t_sess.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                t = time.perf_counter()
                r = await client.post(url + "/generate", json={"prompt": (history + turn)[-8192:], "max_tokens": 16,
                                                               "stream": False, "temperature": 0})
                t_full.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            await client.delete(f"{url}/sessions/{sid}")
            out.append({"history_chars": n, "session_ms": 1000 * statistics.median(t_sess),
                        "resend_ms": 1000 * statistics.median(t_full)})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["stream", "classify", "converse"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--history-chars", type=int, nargs="+", default=[256, 1024, 4096, 8000])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    if a.mode == "stream":
        res = asyncio.run(streams(a.url, a.concurrency, a.tokens, a.model, a.rounds))
    elif a.mode == "classify":
        res = asyncio.run(classify(a.url, a.concurrency, a.seconds))
    else:
        res = asyncio.run(converse(a.url, a.history_chars, a.repeats))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
