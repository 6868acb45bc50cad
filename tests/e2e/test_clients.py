"""The clients people use, unchanged, against a real server: the openai SDK (completions, chat, responses),
LangChain's `OpenAI` and `ChatOpenAI`, LiteLLM; decoding controls (penalties, logit_bias) and structured
outputs (llguidance) seen from outside; the Responses API's stored state against a session's."""
import json
import os
import re

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM reads its bundled map, never the network

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "mood": {"enum": ["happy", "sad", "wise"]}},
          "required": ["name", "age", "mood"], "additionalProperties": False}


def gen(url, **body):
    r = httpx.post(url + "/generate", json={"stream": False, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_langchain_openai_and_chat_openai_with_their_defaults(server):
    from langchain_openai import ChatOpenAI, OpenAI
    llm = OpenAI(base_url=server.url + "/v1", api_key="unused", model="tinylm", max_tokens=12, temperature=0)
    text = llm.invoke("the cat")  # sends frequency_penalty 0, presence_penalty 0, n 1, logprobs null ...
    assert isinstance(text, str) and len(text) > 0
    assert "".join(llm.stream("the cat")) == text
    assert llm.batch(["the cat", "a dog"]) == [text, llm.invoke("a dog")]
    chat = ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="tinylm", max_tokens=12, temperature=0)
    reply = chat.invoke([("system", "the"), ("human", "a dog ran")]).content
    assert reply and "".join(c.content for c in chat.stream([("system", "the"), ("human", "a dog ran")])) == reply
    assert [m.content for m in chat.batch(["the", "a dog"])][0] == chat.invoke("the").content


def test_litellm(server):
    import litellm
    kw = dict(model="openai/tinylm", api_base=server.url + "/v1", api_key="unused", max_tokens=10, temperature=0)
    whole = litellm.completion(messages=[{"role": "user", "content": "the cat"}], **kw).choices[0].message.content
    streamed = litellm.completion(messages=[{"role": "user", "content": "the cat"}], stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == whole
    assert litellm.text_completion(prompt="the cat", **kw).choices[0].text


def test_the_openai_sdk_with_content_parts_developer_role_and_controls(server):
    import openai
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    parts = [{"role": "developer", "content": [{"type": "text", "text": "the"}, {"type": "text", "text": "cat"}]},
             {"role": "user", "content": [{"type": "text", "text": "a dog ran"}], "name": "ann"}]
    plain = [{"role": "system", "content": "the\ncat"}, {"role": "user", "content": "a dog ran"}]
    a = client.chat.completions.create(model="tinylm", messages=parts, max_tokens=20, temperature=0)
    b = client.chat.completions.create(model="tinylm", messages=plain, max_tokens=20, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content  # developer = system, parts joined
    c = client.completions.create(model="tinylm", prompt="the", max_tokens=40, temperature=1, seed=5,
                                  frequency_penalty=1.5, presence_penalty=0.5, logit_bias={"2": 3})
    again = client.completions.create(model="tinylm", prompt="the", max_tokens=40, temperature=1, seed=5,
                                      frequency_penalty=1.5, presence_penalty=0.5, logit_bias={"2": 3})
    assert c.choices[0].text == again.choices[0].text  # a seed still reproduces the text
    choice = client.completions.create(model="tinylm", prompt="is it?", max_tokens=10,
                                       extra_body={"guided_choice": ["yes", "no"]})
    assert choice.choices[0].text in ("yes", "no") and choice.choices[0].finish_reason == "stop"
    with pytest.raises(openai.UnprocessableEntityError, match="image_url"):
        client.chat.completions.create(model="tinylm", max_tokens=5, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}])


def repeats(text: str, n: int = 4) -> int:
    """How many of the text's n-grams it has written before."""
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    return len(grams) - len(set(grams))


def test_frequency_penalty_lowers_repeats(server):
    body = dict(model="tinylm", prompt="the cat", max_tokens=200, temperature=0.7, seed=3)
    plain = gen(server.url, **body)["text"]
    penalised = gen(server.url, **body, frequency_penalty=2)["text"]
    assert repeats(penalised) < 0.7 * repeats(plain), (repeats(plain), repeats(penalised))
    assert gen(server.url, **body, frequency_penalty=0, presence_penalty=0, repetition_penalty=1,
               logit_bias={}, min_p=0)["text"] == plain  # neutral values change nothing


def test_logit_bias_bans_and_forces(server, artifacts):
    from service.tokenizer import load
    tok = load(artifacts / "tinylm" / "tokenizer.json")
    plain = gen(server.url, model="tinylm", prompt="the", max_tokens=150, temperature=1, seed=1)["text"]
    common = max(set(plain), key=plain.count)
    tid = tok.encode(common)[0]
    banned = gen(server.url, model="tinylm", prompt="the", max_tokens=150, temperature=1, seed=1,
                 logit_bias={str(tid): -100})["text"]
    assert common in plain and common not in banned
    forced = gen(server.url, model="tinylm", prompt="the", max_tokens=30, temperature=1, seed=1,
                 logit_bias={str(tid): 100})["text"]
    assert forced == common * 30
    r = httpx.post(server.url + "/v1/completions", json={"model": "tinylm", "prompt": "x", "logit_bias": {
        str(tok.vocab_size): 1}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "logit_bias" and str(tok.vocab_size) in r.text


def test_json_schema_outputs_of_the_bundled_model_validate(bundled):
    import jsonschema
    valid = stopped = 0
    for seed in range(5):
        r = httpx.post(bundled.url + "/v1/chat/completions", timeout=120, json={
            "model": "fortunes", "messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 120,
            "n": 10, "seed": seed, "temperature": 1.0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}})
        assert r.status_code == 200, r.text
        for c in r.json()["choices"]:
            if c["finish_reason"] == "stop":
                stopped += 1
                jsonschema.validate(json.loads(c["message"]["content"]), SCHEMA)
                valid += 1
    assert stopped == valid and stopped >= 40, stopped  # 50 generations: every finished one valid


def test_a_regex_holds_across_the_tokens_of_a_bpe_model(bundled):
    rx = r"(Mon|Tues|Wednes)day, [1-9][0-9]? (January|February|March) 20[0-9]{2}\."
    for seed in range(4):
        r = httpx.post(bundled.url + "/v1/completions", timeout=60, json={
            "model": "fortunes-bpe", "prompt": "The date was", "max_tokens": 40, "seed": seed,
            "guided_regex": rx}).json()
        c = r["choices"][0]
        assert c["finish_reason"] == "stop" and re.fullmatch(rx, c["text"]), c
        assert r["usage"]["completion_tokens"] < len(c["text"])  # tokens of several characters, matched whole


def test_a_constraint_that_does_not_compile_is_a_422_with_the_reason(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "tinylm", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}}}})
    err = r.json()["error"]
    assert r.status_code == 422 and err["field"] == "response_format" and "missing" in err["message"], r.text
    r = httpx.post(server.url + "/generate", json={"model": "tinylm", "prompt": "x", "guided_regex": "(["})
    assert r.status_code == 422 and r.json()["error"]["field"] == "guided_regex" and "regex" in r.text
    r = httpx.post(server.url + "/generate", json={"model": "tinylm", "prompt": "x", "guided_regex": "[0-9]+"})
    assert r.status_code == 422 and "vocabulary" in r.json()["error"]["message"]  # tinylm has no digits
    r = httpx.post(server.url + "/generate", json={"model": "tinylm", "prompt": "a", "guided_regex": "the (cat|dog) 9",
                                                   "stream": False})  # the digit comes later: the row ends there
    assert r.status_code == 422 and r.json()["error"]["type"] == "constraint_unsatisfiable", r.text


def test_a_constrained_turn_keeps_sessions_and_the_prefix_cache_exact(server):
    sid = httpx.post(server.url + "/sessions", json={"model": "tinylm"}).json()["session_id"]
    prompt = "the cat said: "
    rx = r"the (cat|dog) (sat|ran) on [a-z]{2,6}\."
    first = gen(server.url, model="tinylm", prompt=prompt, max_tokens=60, seed=2, session_id=sid, guided_regex=rx)
    assert first["finish_reason"] == "stop" and re.fullmatch(rx, first["text"])
    after = gen(server.url, model="tinylm", prompt="", max_tokens=30, temperature=0, session_id=sid)["text"]
    for _ in range(2):  # the second finds the whole prompt in the prefix cache
        assert gen(server.url, model="tinylm", prompt=prompt + first["text"], max_tokens=30, temperature=0)[
            "text"] == after


def sdk(server):
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused")


def test_the_responses_api_with_the_openai_sdk(server, bundled):
    import openai
    client = sdk(server)
    r = client.responses.create(model="tinylm", input="a dog ran", instructions="the cat", max_output_tokens=20,
                                temperature=0)
    assert r.id.startswith("resp_") and r.object == "response" and r.output_text
    assert r.status in ("completed", "incomplete") and r.usage.output_tokens <= 20
    events = list(client.responses.create(model="tinylm", input="a dog ran", instructions="the cat",
                                          max_output_tokens=20, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"] and kinds[-1] in ("response.completed", "response.incomplete")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == r.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert client.responses.retrieve(r.id).output_text == r.output_text
    js = sdk(bundled).responses.create(model="fortunes", input="a dog", max_output_tokens=80, text={"format": {
        "type": "json_schema", "name": "p", "schema": {"type": "object", "properties": {"n": {
            "type": "integer", "minimum": 0, "maximum": 99}}, "required": ["n"], "additionalProperties": False}}})
    assert js.status == "completed" and 0 <= json.loads(js.output_text)["n"] <= 99
    gone = client.responses.create(model="tinylm", input="x", max_output_tokens=3, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(gone.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="tinylm", input="x", previous_response_id=gone.id)
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    for bad, field in (({"tools": [{"type": "web_search"}]}, "tools"), ({"include": ["x"]}, "include"),
                       ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
                        "input.0.content")):
        resp = httpx.post(server.url + "/v1/responses", json={"model": "tinylm", "input": "x", **bad})
        assert resp.status_code == 422 and resp.json()["error"]["field"] == field, resp.text


def test_a_responses_chain_equals_the_same_turns_through_a_session(server):
    """Three turns through previous_response_id read exactly what a session continued with the rest of each
    rendered conversation reads (the default template: "User: ...\\nAssistant:", replies ending at "\\nUser:")."""
    client = sdk(server)
    turns = ["the cat", "a dog ran", "rain fell"]
    prev, texts, history = None, [], []
    for t in turns:
        r = client.responses.create(model="tinylm", input=t, max_output_tokens=25, temperature=0.9, extra_body={"seed": 7},
                                    **({"previous_response_id": prev.id} if prev else {}))
        texts.append((r.output_text, r.status, r.usage.input_tokens))
        prev = r
    sid = httpx.post(server.url + "/sessions", json={"model": "tinylm"}).json()["session_id"]
    read = ""  # what the session's state has read
    for i, t in enumerate(turns):
        history.append(f"User: {t}\nAssistant:")
        full = "".join(history)
        prompt, read = full[len(read):], full
        g = gen(server.url, model="tinylm", prompt=prompt, max_tokens=25, temperature=0.9, seed=7, session_id=sid,
                stop=["\nUser:"])
        assert (g["text"], "completed" if g["finish_reason"] == "stop" else "incomplete",
                g["usage"]["prompt_tokens"]) == texts[i], i  # the same text read, the same reply
        read += g["text"] + ("\nUser:" if g["finish_reason"] == "stop" else "")
        history.append(g["text"] + "\n")
    assert texts[1][2] < len("".join(history[:3]))  # turn 2 read only its own text: the state held the rest
