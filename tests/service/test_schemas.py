"""Request bodies: malformed JSON is a 400, a bad field a 422 naming the field; each builds its sampling."""
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
    for field in ("logit_bias", "best_of", "suffix", "presence_penalty"):  # none silently ignored
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
    assert err(ChatRequest, b'{"messages": [{"role": "user", "content": "x"}], "tools": []}').field == "tools"


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
