"""Locust scenarios for rnnserve: every way the service is used.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000
    rnnserve loadtest --users 20 --duration 60s          # starts a server when --host is not given

Weights and sizes come from environment variables:
  LT_WEIGHT_STREAM, LT_WEIGHT_WHOLE, LT_WEIGHT_CLASSIFY, LT_WEIGHT_SESSION, LT_WEIGHT_CHAT (default 4, 2, 3, 1, 1)
  LT_MAX_TOKENS (default 64), LT_PROMPT_CHARS (extra prompt characters, default 0), LT_TURNS (default 3),
  LT_CHAT_SYSTEM_CHARS (a chat's opening text, default 2000), LT_CHAT_TURNS (turns before a new chat, default 8)
Streaming users report two custom metrics: `ttft` (ms to the first SSE event) and `tokens` (completion
tokens received, as the "response length").
"""
import json
import os
import random
import time
from pathlib import Path

from locust import HttpUser, between, task

PROMPTS = [p for p in (Path(__file__).with_name("prompts.txt")).read_text(encoding="utf-8").splitlines() if p]
TEXTS = ["The weather is lovely today.", "Das Wetter ist heute schön.", "El tiempo es estupendo hoy.",
         "Il tempo oggi è bellissimo.", "O tempo hoje está ótimo.", "Сегодня прекрасная погода.",
         "Dzisiaj jest piękna pogoda.", "Dnes je krásné počasí."]
MAX_TOKENS = int(os.environ.get("LT_MAX_TOKENS", 64))
PROMPT_CHARS = int(os.environ.get("LT_PROMPT_CHARS", 0))
TURNS = int(os.environ.get("LT_TURNS", 3))
CHAT_SYSTEM_CHARS = int(os.environ.get("LT_CHAT_SYSTEM_CHARS", 2000))
CHAT_TURNS = int(os.environ.get("LT_CHAT_TURNS", 8))


def weight(name, default):
    return int(os.environ.get(f"LT_WEIGHT_{name}", default))


def prompt():
    p = random.choice(PROMPTS)
    if PROMPT_CHARS:
        p = ("lorem ipsum dolor sit amet " * (PROMPT_CHARS // 27 + 1))[:PROMPT_CHARS] + p
    return p


class StreamingUser(HttpUser):
    """Streams a generation and reads the SSE stream to the end."""
    weight = weight("STREAM", 4)
    wait_time = between(0.1, 0.5)

    @task
    def stream(self):
        body = {"prompt": prompt(), "max_tokens": MAX_TOKENS, "temperature": 0.8}
        t0 = time.perf_counter()
        with self.client.post("/generate", json=body, stream=True, catch_response=True,
                              name="/generate [stream]") as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {r.text[:200]}")
                return
            ttft, final, done = None, None, False
            for line in r.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                ev = json.loads(data)
                if ttft is None and "index" in ev:
                    ttft = (time.perf_counter() - t0) * 1000
                if "finish_reason" in ev:
                    final = ev
                if "error" in ev:
                    r.failure(f"error event: {ev['error']}")
                    return
            if not done or final is None:
                r.failure("stream ended without a final event and [DONE]")
                return
            r.success()
        fire = self.environment.events.request.fire
        fire(request_type="SSE", name="ttft", response_time=ttft or 0, response_length=0, exception=None,
             context={})
        fire(request_type="SSE", name="tokens", response_time=(time.perf_counter() - t0) * 1000,
             response_length=final["usage"]["completion_tokens"], exception=None, context={})


class WholeUser(HttpUser):
    """Non-streaming generation."""
    weight = weight("WHOLE", 2)
    wait_time = between(0.1, 0.5)

    @task
    def whole(self):
        with self.client.post("/generate", json={"prompt": prompt(), "max_tokens": MAX_TOKENS, "stream": False},
                              catch_response=True, name="/generate [whole]") as r:
            if r.status_code != 200 or "text" not in r.json():
                r.failure(f"status {r.status_code}")


class ClassifyUser(HttpUser):
    """Classification, single texts and batches."""
    weight = weight("CLASSIFY", 3)
    wait_time = between(0.05, 0.2)

    @task(3)
    def single(self):
        self.client.post("/classify", json={"text": random.choice(TEXTS)}, name="/classify [single]")

    @task(1)
    def batch(self):
        with self.client.post("/classify", json={"texts": random.sample(TEXTS, 5)}, catch_response=True,
                              name="/classify [batch]") as r:
            if r.status_code != 200 or len(r.json().get("results", [])) != 5:
                r.failure(f"status {r.status_code}")


class SessionUser(HttpUser):
    """A conversation: create a session, several turns on it, delete it."""
    weight = weight("SESSION", 1)
    wait_time = between(0.2, 1.0)

    @task
    def conversation(self):
        r = self.client.post("/sessions", json={}, name="/sessions [create]")
        if r.status_code != 201:
            return
        sid = r.json()["session_id"]
        for k in range(TURNS):
            with self.client.post("/generate", json={"prompt": prompt() if k == 0 else "", "max_tokens": 32,
                                                     "stream": False, "session_id": sid},
                                  catch_response=True, name="/generate [session]") as g:
                if g.status_code != 200 or g.json().get("session_id") != sid:
                    g.failure(f"status {g.status_code}")
        self.client.delete(f"/sessions/{sid}", name="/sessions/{id} [delete]")


class ChatUser(HttpUser):
    """A stateless chat client, as the openai SDK and chat front ends are: every turn resends the whole
    conversation to /v1/chat/completions (the server's prefix cache should read only the new text)."""
    weight = weight("CHAT", 1)
    wait_time = between(0.1, 0.5)

    def on_start(self):
        self.new_chat()

    def new_chat(self):
        opening = f"Conversation {random.randrange(10**9)}. " + "the story so far: " + " ".join(
            random.choice(PROMPTS) for _ in range(CHAT_SYSTEM_CHARS // 10))
        self.messages, self.turns = [{"role": "system", "content": opening[:CHAT_SYSTEM_CHARS]}], 0

    @task
    def turn(self):
        self.messages.append({"role": "user", "content": random.choice(PROMPTS)})
        with self.client.post("/v1/chat/completions", json={"messages": self.messages, "max_tokens": MAX_TOKENS,
                                                            "temperature": 0.8},
                              catch_response=True, name="/v1/chat/completions [resend]") as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {r.text[:200]}")
                self.new_chat()
                return
            self.messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
        self.turns += 1
        if self.turns >= CHAT_TURNS:
            self.new_chat()
