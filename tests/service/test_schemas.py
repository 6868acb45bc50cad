"""Request bodies: malformed JSON is a 400, a bad field a 422 naming the field; each builds its sampling."""
import json
import re

import pytest

from service.errors import RequestError
from service.schemas import ClassifyRequest, CompletionRequest, GenerateRequest, SessionCreate, parse


def err(model, raw: bytes) -> RequestError:
    with pytest.raises(RequestError) as e:
        parse(model, raw)
    return e.value


def test_generate_defaults_and_sampling_params():
    g = parse(GenerateRequest, b'{"prompt": "hi", "temperature": 0.5, "top_k": 3, "top_p": 0.9, "seed": 7}')
    assert (g.max_tokens, g.stream, g.stop, g.session_id) == (256, True, [], None)
    p = g.sampling_params()
    assert (p.temperature, p.top_k, p.top_p) == (0.5, 3, pytest.approx(0.9))
    assert p.rng.random() == g.sampling_params().rng.random()  # same seed, same draws


def test_completions_take_prompts_and_refuse_what_they_do_not_support():
    c = parse(CompletionRequest, b'{"prompt": ["x", "y"], "max_tokens": 3, "n": 2, "stop": "\\n"}')
    assert c.prompts == ["x", "y"] and c.stop == ["\n"] and c.sampling_params().top_k == 0
    for field in ("best_of", "suffix", "store", "reasoning_effort"):  # none silently ignored
        e = err(CompletionRequest, b'{"prompt": "x", "%s": 1}' % field.encode())
        assert (e.status, e.field) == (422, field) and "unsupported" in e.message
    assert err(CompletionRequest, b'{"prompt": []}').field == "prompt"
    assert err(CompletionRequest, b'{"prompt": "x", "max_tokens": 0}').field == "max_tokens"  # 0: only with echo
    assert parse(CompletionRequest, b'{"prompt": "x", "max_tokens": 0, "echo": true}').max_tokens == 0
    assert err(CompletionRequest, b'{"prompt": ["a", "b", "c"], "n": 6}').field == "n"  # 18 choices > 16
    assert err(CompletionRequest, b'{"prompt": "x", "stream_options": {"include_usage": true}}').field == "stream_options"


def test_chat_bodies():
    from service.schemas import ChatRequest
    c = parse(ChatRequest, b'{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9}')
    assert c.limit == 9 and c.logprobs_top is None
    assert err(ChatRequest, b'{"messages": []}').field == "messages"
    assert err(ChatRequest, b'{"messages": [{"role": "tool", "content": "x"}]}').field.startswith("messages")
    assert err(ChatRequest, b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}').field == \
        "top_logprobs"
    assert parse(ChatRequest, b'{"messages": [{"role": "user", "content": "x"}], "tools": []}').tools == []
    assert err(ChatRequest, b'{"messages": [{"role": "user", "content": "x"}], "tools": [{}]}').field == "tools"


@pytest.mark.parametrize("raw,status,field", [
    (b'{"prompt": ', 400, "body"),
    (b'{"temperature": NaN}', 400, "body"),
    (b'\xff', 400, "body"),
    (b'[1]', 422, "body"),
    (b'{"temperature": "hot"}', 422, "temperature"),
    (b'{"temperature": true}', 422, "temperature"),
    (b'{"stop": [""]}', 422, "stop"),
    (b'{"stop": ["' + b"x" * 65 + b'"]}', 422, "stop"),
    (b'{"seed": -1}', 422, "seed"),
    (b'{"nope": 1}', 422, "nope"),
])
def test_generate_errors_name_the_field(raw, status, field):
    e = err(GenerateRequest, raw)
    assert (e.status, e.field) == (status, field)
    assert e.body() == {"error": {"type": e.kind, "message": e.message, "field": field}}


def test_classify_needs_exactly_one_of_text_and_texts():
    assert parse(ClassifyRequest, b'{"text": "a"}').texts is None
    assert err(ClassifyRequest, b'{"text": "a", "texts": ["b"]}').message.endswith("give exactly one of `text` or `texts`")
    assert err(ClassifyRequest, b'{"texts": ["a", ""]}').field == "texts"


def test_session_create_body():
    assert parse(SessionCreate, b"{}").model is None
    assert err(SessionCreate, b'{"modle": "x"}').field == "modle"


def test_decoding_controls_take_what_clients_send():
    """LangChain's OpenAI sends frequency_penalty and presence_penalty 0 and logit_bias {} on every call; the
    openai SDK sends null for what is not set: all neutral, all accepted."""
    c = parse(CompletionRequest, b'{"prompt": "x", "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {},'
                                 b' "seed": null, "logprobs": null, "n": 1, "top_p": 1, "temperature": 0.7}')
    assert c.controls() == {"frequency": 0.0, "presence": 0.0, "repetition": 1.0, "bias": {}, "min_p": 0.0}
    from service.processors import Controls
    assert Controls.of(**c.controls()) is None  # neutral: the row pays nothing
    c = parse(CompletionRequest, b'{"prompt": "x", "frequency_penalty": 2, "logit_bias": {"7": -100, " 3": 5},'
                                 b' "repetition_penalty": 1.3, "min_p": 0.1}')
    assert c.controls()["bias"] == {7: -100, 3: 5} and Controls.of(**c.controls()).penalised
    for body, field in ((b'{"prompt": "x", "frequency_penalty": 2.5}', "frequency_penalty"),
                        (b'{"prompt": "x", "presence_penalty": "1"}', "presence_penalty"),
                        (b'{"prompt": "x", "repetition_penalty": 0}', "repetition_penalty"),
                        (b'{"prompt": "x", "min_p": 1.5}', "min_p"),
                        (b'{"prompt": "x", "logit_bias": {"a": 1}}', "logit_bias"),
                        (b'{"prompt": "x", "logit_bias": {"1": 101}}', "logit_bias")):
        e = err(CompletionRequest, body)
        assert (e.status, e.field) == (422, field), (body, e.message)


def test_constraints_as_openai_and_vllm_name_them():
    from service.schemas import ChatRequest
    schema = b'{"type": "object", "properties": {"a": {"type": "integer"}}}'
    kinds = {b'"response_format": {"type": "json_object"}': "json_object",
             b'"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": %s}}' % schema:
                 "json_schema",
             b'"guided_json": %s' % schema: "json_schema", b'"guided_regex": "[0-9]+"': "regex",
             b'"guided_choice": ["yes", "no"]': "choice", b'"structured_outputs": {"regex": "a+"}': "regex",
             b'"guided_grammar": "start: \\"a\\""': "grammar", b'"response_format": {"type": "text"}': None}
    for part, kind in kinds.items():
        c = parse(ChatRequest, b'{"messages": [{"role": "user", "content": "x"}], %s}' % part)
        assert (c.constraint_spec().kind if c.constraint_spec() else None) == kind, part
    e = err(ChatRequest, b'{"messages": [{"role": "user", "content": "x"}], "guided_regex": "a", "guided_choice": ["b"]}')
    assert e.status == 422 and e.field == "guided_choice" and "one constraint" in e.message
    e = err(ChatRequest, b'{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}')
    assert e.field == "response_format" and "json_schema" in e.message


def test_chat_messages_as_clients_send_them():
    from service.schemas import ChatRequest
    c = parse(ChatRequest, b'{"messages": [{"role": "developer", "content": [{"type": "text", "text": "be"}, '
                           b'{"type": "text", "text": "brief"}]}, {"role": "user", "content": "hi", "name": "bo"}],'
                           b' "tools": [], "tool_choice": "none"}')
    assert c.messages[0].for_template() == {"role": "system", "content": "be\nbrief"}
    e = err(ChatRequest, b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}')
    assert e.field == "messages.0.content" and "'image_url'" in e.message
    e = err(ChatRequest, b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}')
    assert e.field == "tools" and "no tool calls" in e.message


def test_the_openai_field_table_is_what_the_schemas_take():
    """docs/api.md lists every OpenAI request field per endpoint: ✓ is a field of that request's schema, 422 is
    refused naming it."""
    from service.config import DEFAULT_MODELS
    from service.responses import ResponsesRequest
    from service.schemas import ChatRequest
    doc = (DEFAULT_MODELS.parent / "docs" / "api.md").read_text()
    table = doc[doc.index("## OpenAI request fields"):]
    table = table[:table.index("\n## ")] if "\n## " in table else table
    schemas = {1: (CompletionRequest, {"prompt": "x"}), 2: (ChatRequest, {"messages": [{"role": "user",
                                                                                        "content": "x"}]}),
               3: (ResponsesRequest, {"input": "x"})}
    checked = 0
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            for col, (schema, base) in schemas.items():
                fields = {f.alias or n for n, f in schema.model_fields.items()}
                if cells[col] == "✓":
                    assert name in fields, (name, schema.__name__)
                elif cells[col] == "422":
                    assert name not in fields, (name, schema.__name__)
                    e = err(schema, json.dumps({**base, name: 1}).encode())
                    assert (e.status, e.field) == (422, name), (name, schema.__name__, e.message)
                else:
                    assert cells[col] == "–", (name, cells[col])  # not a field of that OpenAI API
                    continue
                checked += 1
    assert checked > 100
