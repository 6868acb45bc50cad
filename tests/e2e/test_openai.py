"""The OpenAI surface over a real server: chat completions with the official client, n choices, log-probabilities,
a text scored (echo, max_tokens 0), lists of prompts, usage chunks, unsupported fields refused; the prefix cache
seen from outside (/metrics, /info), and a stateless chat resent in full read as a lookup."""
import json

import httpx
import pytest

from tests.conftest import rnnserve


def metric(url: str, name: str) -> float:
    line = next((l for l in httpx.get(url + "/metrics").text.splitlines() if l.startswith(name + " ")), None)
    return float(line.split()[1]) if line else 0.0


def test_the_openai_client_streams_a_chat(server):
    import openai
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    messages = [{"role": "system", "content": "the cat"}, {"role": "user", "content": "a dog ran"}]
    chunks = list(client.chat.completions.create(model="tinylm", messages=messages, max_tokens=30, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="tinylm", messages=messages, max_tokens=30, temperature=0)
    assert whole.choices[0].message.content == text and whole.choices[0].message.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # stream_options.include_usage
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert whole.usage.prompt_tokens == len("the cat\nUser: a dog ran\nAssistant:")  # the default template
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="tinylm", messages=messages, max_tokens=5, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_n_choices_with_a_seed_are_distinct_and_reproducible(server, path):
    body = {"model": "tinylm", "max_tokens": 30, "temperature": 1.0, "seed": 41, "n": 3}
    body.update({"prompt": "the cat"} if "chat" not in path else {"messages": [{"role": "user", "content": "the"}]})
    texts = []
    for _ in range(2):
        r = httpx.post(server.url + path, json=body, timeout=60).json()
        choices = sorted(r["choices"], key=lambda c: c["index"])
        assert [c["index"] for c in choices] == [0, 1, 2]
        texts.append([c["text"] if "text" in c else c["message"]["content"] for c in choices])
    assert texts[0] == texts[1] and len(set(texts[0])) == 3
    one = httpx.post(server.url + path, json={**body, "n": 1}, timeout=60).json()["choices"][0]
    assert (one.get("text") or one.get("message", {}).get("content")) == texts[0][0]  # choice i: seed + i
    streamed = {}
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                for c in json.loads(line[6:])["choices"]:
                    streamed[c["index"]] = streamed.get(c["index"], "") + (c.get("text") or
                                                                            c.get("delta", {}).get("content") or "")
    assert [streamed[i] for i in range(3)] == texts[0]


def test_log_probabilities_and_a_list_of_prompts(server):
    r = httpx.post(server.url + "/v1/completions", json={
        "model": "tinylm", "prompt": ["the cat", "a dog"], "max_tokens": 6, "temperature": 0, "logprobs": 3}).json()
    assert [c["index"] for c in r["choices"]] == [0, 1] and r["usage"]["prompt_tokens"] == 7 + 5
    lp = r["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == r["choices"][0]["text"] and len(lp["top_logprobs"][0]) == 3
    greedy_first = max(lp["top_logprobs"][0], key=lp["top_logprobs"][0].get)
    assert greedy_first == lp["tokens"][0] and lp["token_logprobs"][0] == pytest.approx(lp["top_logprobs"][0][
        greedy_first])
    chat = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "tinylm", "messages": [{"role": "user", "content": "the"}], "max_tokens": 5, "temperature": 0,
        "logprobs": True, "top_logprobs": 2}).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == 5 and all(len(c["top_logprobs"]) == 2 and c["logprob"] <= 0 for c in content)


def test_a_scored_text_sums_to_what_eval_measures(server, artifacts, tmp_path):
    text = "the cat sat on a mat and a dog ran to the park while rain fell over old town"
    r = httpx.post(server.url + "/v1/completions", json={"model": "tinylm", "prompt": text, "max_tokens": 0,
                                                          "echo": True, "logprobs": 0}).json()
    choice = r["choices"][0]
    assert choice["text"] == text and r["usage"]["completion_tokens"] == 0
    scores = choice["logprobs"]["token_logprobs"]
    assert len(scores) == len(text) and all(s is not None and s <= 0 for s in scores)  # each given the start text
    (tmp_path / "t.txt").write_text("\n" + text, encoding="utf-8")  # the model's start text, then the text
    ev = json.loads(rnnserve("eval", artifacts / "tinylm", "--data", tmp_path / "t.txt", "--streams", 1,
                             "--json").stdout)
    assert ev["tokens"] == len(text) and sum(scores) == pytest.approx(-ev["loss"] * ev["tokens"], rel=1e-5)


def test_unsupported_fields_are_named(server):
    for path, body in (("/v1/completions", {"prompt": "x", "best_of": 2}),
                       ("/v1/completions", {"prompt": "x", "suffix": "y"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "audio": {}}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "store": True})):
        r = httpx.post(server.url + path, json=body)
        field = next(k for k in body if k not in ("prompt", "messages"))
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


def test_a_chat_resent_in_full_is_read_from_the_prefix_cache(server):
    hits0, saved0 = metric(server.url, "rnnserve_prefix_cache_hits_total"), \
        metric(server.url, "rnnserve_prefix_cache_tokens_saved_total")
    messages = [{"role": "system", "content": "the cat sat on a mat " * 20}]
    for turn in range(3):
        messages.append({"role": "user", "content": f"turn {turn} a dog ran"})
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tinylm", "messages": messages,
                                                                  "max_tokens": 20, "temperature": 0}).json()
        messages.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})
    hits = metric(server.url, "rnnserve_prefix_cache_hits_total") - hits0
    saved = metric(server.url, "rnnserve_prefix_cache_tokens_saved_total") - saved0
    assert hits >= 2 and saved >= 2 * 420  # turns 2 and 3 found the whole system text and the turns before
    info = httpx.get(server.url + "/info").json()["prefix_cache"]
    assert info["entries"] > 0 and 0 < info["bytes"] <= info["max_bytes"]


def test_export_sets_the_chat_template(artifacts, tmp_path):
    from tests.conftest import Server
    (tmp_path / "t.jinja").write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                                      "{% if add_generation_prompt %}<assistant>{% endif %}")
    run = artifacts.parent / "run-lm"
    rnnserve("export", run, "--out", tmp_path / "m" / "chatty", "--chat-template", tmp_path / "t.jinja",
             "--chat-stop", "<user>")
    m = json.loads((tmp_path / "m" / "chatty" / "model.json").read_text())
    assert m["chat_stop"] == ["<user>"] and m["chat_template"].startswith("{% for m in messages %}")
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}")
    bad = rnnserve("export", run, "--out", tmp_path / "bad", "--chat-template", tmp_path / "bad.jinja", check=False)
    assert bad.returncode == 2 and "does not compile" in bad.stderr and not (tmp_path / "bad").exists()
    s = Server(tmp_path / "m")
    try:
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "the cat"}],
                                                              "max_tokens": 4, "temperature": 0}).json()
        assert r["usage"]["prompt_tokens"] == len("<user>the cat<assistant>")
    finally:
        s.stop()
