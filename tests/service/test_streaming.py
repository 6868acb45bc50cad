"""Engine events -> HTTP bodies: pieces coalesce, the final event closes the stream, one error shape."""
import asyncio
import json

from service.requests import Done, Failed, GenerationRequest, Text
from service.runtime import Channel
from service.sampler import SamplingParams
from service.streaming import CompletionEncoder, GenerateEncoder, _sse_body


def collect(events, encoder) -> list:
    async def main():
        req = GenerationRequest([1], 5, SamplingParams(), reply=Channel())
        for ev in events:
            req.reply.put(ev)
        body = [chunk async for chunk in _sse_body(req, encoder, lambda: 0.0)]
        return req, body
    req, body = asyncio.run(main())
    assert body[-1] == b"data: [DONE]\n\n" and not req.cancelled
    return [json.loads(b[6:]) for b in body[:-1]]


def test_generate_stream_coalesces_what_piled_up():
    out = collect([Text("a"), Text("b"), Done("length", "ab", 1, 2)], GenerateEncoder("s1"))
    assert out == [{"text": "ab", "index": 0},
                   {"finish_reason": "length", "text": "ab", "usage": {"prompt_tokens": 1, "completion_tokens": 2},
                    "session_id": "s1"}]


def test_a_failed_step_is_one_error_event_in_the_common_shape():
    out = collect([Text("a"), Failed("inference failed")], GenerateEncoder(None))
    assert out[-1] == {"error": {"type": "inference_error", "message": "inference failed", "field": None}}


def test_completion_chunks_echo_the_prompt_once():
    enc = CompletionEncoder("m", echo_prefix="Q: ")
    out = collect([Text("x"), Done("stop", "x", 3, 1)], enc)
    assert [c["choices"][0]["text"] for c in out] == ["Q: x", ""]
    assert out[-1]["choices"][0]["finish_reason"] == "stop" and out[-1]["usage"]["total_tokens"] == 4
    whole = CompletionEncoder("m", echo_prefix="Q: ").whole(Done("length", "yz", 3, 2))
    assert whole["choices"][0]["text"] == "Q: yz"


def test_a_whole_answer_channel_keeps_only_the_final_event():
    ch = Channel(final_only=True)
    ch.put(Text("a"))
    ch.put(Done("length", "a", 0, 1))
    assert [type(e) for e in ch.items] == [Done]
