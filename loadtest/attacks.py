"""Hostile and unlucky clients against a running server: what it answers and what each costs.

    python -m loadtest.attacks --url http://127.0.0.1:8000 --pid SERVER_PID [--out docs/attacks.json]

Each attack is bounded in count and time and only talks to the given loopback URL. Memory is the resident
size of the server's whole process tree (supervisor, workers, their helpers). docs/reliability.md has the
table, before and after the hardening, from this script.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import time
from urllib.parse import urlparse

import httpx


def tree_rss_mb(pid: int) -> float:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True).stdout.split()
    kids, rss = {}, {}
    for p, pp, r in zip(out[::3], out[1::3], out[2::3]):
        kids.setdefault(int(pp), []).append(int(p))
        rss[int(p)] = int(r)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += kids.get(p, [])
    return total / 1024


def big_body(n=256, chars=2900) -> bytes:
    return json.dumps({"texts": [("bcdfg aeiou " * 400)[i % 7: i % 7 + chars] for i in range(n)]}).encode()


def metric(url, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def active(url) -> float:
    return metric(url, "rnnserve_active_streams")


def classify_flood(url, pid) -> dict:
    base = tree_rss_mb(pid)
    peak = [base]
    stop = False

    async def watch():
        while not stop:
            peak[0] = max(peak[0], tree_rss_mb(pid))
            await asyncio.sleep(0.5)

    async def main():
        nonlocal stop
        w = asyncio.ensure_future(watch())
        async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=200)) as c:
            async def one():
                try:
                    return (await c.post(url + "/classify", content=big_body(),
                                         headers={"content-type": "application/json"})).status_code
                except httpx.HTTPError:
                    return "client gave up (20 s)"
            codes = await asyncio.gather(*(one() for _ in range(150)))
        stop = True
        await w
        return codes
    t0 = time.time()
    codes = asyncio.run(main())
    took = time.time() - t0
    t1 = time.time()
    r = httpx.post(url + "/classify", json={"text": "hello"}, timeout=120)
    next_ms = (time.time() - t1) * 1000
    time.sleep(10)
    counts = {c: list(map(str, codes)).count(c) for c in sorted(set(map(str, codes)))}
    return {"answers": counts, "seconds": round(took, 1), "rss_before_mb": round(base), "rss_peak_mb": round(peak[0]),
            "rss_10s_after_mb": round(tree_rss_mb(pid)), "next_one_word_ms": round(next_ms), "next_status": r.status_code}


def delete_mid_stream(url, pid) -> dict:
    for _ in range(5):
        sid = httpx.post(url + "/sessions", json={}).json()["session_id"]
        with httpx.stream("POST", url + "/generate", json={"max_tokens": 4096, "session_id": sid}, timeout=60) as r:
            lines = r.iter_lines()  # keep it: a dropped iterator closes the stream
            next(lines)
            code = httpx.delete(f"{url}/sessions/{sid}").status_code
    t0 = time.time()
    while time.time() - t0 < 30 and active(url) > 0:
        time.sleep(0.1)
    time.sleep(2)
    s = httpx.get(url + "/info").json()["sessions"]
    return {"delete": code, "sessions_after": s["sessions"], "bytes_after": s["bytes"]}


def silent_connections(url, pid, n=50, wait=15) -> dict:
    u = urlparse(url)
    socks = [socket.create_connection((u.hostname, u.port)) for _ in range(n)]
    time.sleep(wait)
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            closed += s.recv(1024) != b"" or 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    return {"connections": n, "closed_by_server_within_s": wait, "closed": closed}


def unread_stream(url, pid) -> dict:
    u = urlparse(url)
    tokens0 = metric(url, "rnnserve_generation_tokens_total")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.connect((u.hostname, u.port))
    body = json.dumps({"prompt": "x", "max_tokens": 4096, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
              str(len(body)).encode() + b"\r\n\r\n" + body)
    t0 = time.time()
    while time.time() - t0 < 60 and active(url) == 0:
        time.sleep(0.05)
    while time.time() - t0 < 60 and active(url) > 0:
        time.sleep(0.2)
    freed = time.time() - t0
    s.settimeout(5)
    try:
        got = 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        closed = True
    except (socket.timeout, OSError):
        closed = False
    s.close()
    return {"slot_freed_after_s": round(freed, 1), "connection_closed": closed,
            "tokens_generated": int(metric(url, "rnnserve_generation_tokens_total") - tokens0)}


def departed_whole(url, pid) -> dict:
    u = urlparse(url)
    before = httpx.get(url + "/metrics").text.count('status="500"')
    tokens0 = metric(url, "rnnserve_generation_tokens_total")
    s = socket.create_connection((u.hostname, u.port))
    body = json.dumps({"max_tokens": 4096, "stream": False}).encode()
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
              str(len(body)).encode() + b"\r\n\r\n" + body)
    time.sleep(0.3)
    s.close()
    t0 = time.time()
    while time.time() - t0 < 60 and active(url) > 0:
        time.sleep(0.05)
    time.sleep(0.5)
    text = httpx.get(url + "/metrics").text
    return {"slot_freed_after_s": round(time.time() - t0, 2), "new_500s": text.count('status="500"') - before,
            "tokens_generated": int(metric(url, "rnnserve_generation_tokens_total") - tokens0)}


def bad_values(url, pid) -> dict:
    def post(path, raw):
        r = httpx.post(url + path, content=raw, headers={"content-type": "application/json"}, timeout=60)
        return r.status_code, r.text[:120]
    out = {"surrogate": post("/v1/completions", b'{"prompt": "\\ud800", "echo": true, "max_tokens": 1}')}
    r = httpx.post(url + "/generate", json={"prompt": "The", "temperature": 1e-40, "stream": False, "max_tokens": 20},
                   timeout=60).json()
    out["temperature_1e-40"] = {"text_chars": len(r.get("text", "")), "tokens": r.get("usage", {}).get("completion_tokens")}
    out["no_content_type"] = httpx.post(url + "/generate", content=b'{"max_tokens": 2}').status_code
    return out


ATTACKS = {"classify_flood": classify_flood, "delete_mid_stream": delete_mid_stream,
           "silent_connections": silent_connections, "unread_stream": unread_stream,
           "departed_whole": departed_whole, "bad_values": bad_values}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtest.attacks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True, help="the server's pid (its process tree is measured)")
    ap.add_argument("--only", nargs="*", choices=list(ATTACKS))
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    res = {}
    for name in a.only or ATTACKS:
        try:
            res[name] = ATTACKS[name](a.url, a.pid)
        except Exception as e:  # noqa: BLE001 — a server that breaks under an attack is a result too
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, json.dumps(res[name]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
