"""Engine events -> HTTP bodies: pieces coalesce per choice, the last final event closes the stream, one error
shape; the OpenAI encoders' choices, echo, usage and log-probabilities."""
import asyncio
import json

from service.requests import Done, Failed, GenerationRequest, Text
from service.runtime import Channel
from service.sampler import SamplingParams
from service.streaming import ChatEncoder, CompletionEncoder, GenerateEncoder, _sse_body
from service.tokenizer import CharTokenizer

TOK = CharTokenizer.build(["Q: xyz abc"])


def request(n=1, prompt=(1, 2, 3), reply=None, base=0):
    reply = reply or Channel()
    req = GenerationRequest(list(prompt), 5, SamplingParams(), n=n, base=base, reply=reply)
    reply.expect += n
    return req


def collect(events, encoder_of, n=1) -> list:
    async def main():
        req = request(n)
        for ev in events:
            req.reply.put(ev)
        body = [chunk async for chunk in _sse_body([req], encoder_of([req]), lambda: 0.0)]
        return req, body
    req, chunks = asyncio.run(main())
    body = [e + b"\n\n" for e in b"".join(chunks).split(b"\n\n") if e]  # a write may carry several events
    assert body[-1] == b"data: [DONE]\n\n"
    return [json.loads(b[6:]) for b in body[:-1]], req


def test_generate_stream_coalesces_what_piled_up():
    out, req = collect([Text("a"), Text("b"), Done("length", "ab", 1, 2)], lambda reqs: GenerateEncoder("s1"))
    assert out == [{"text": "ab", "index": 0},
                   {"finish_reason": "length", "text": "ab", "usage": {"prompt_tokens": 1, "completion_tokens": 2},
                    "session_id": "s1"}]
    assert not req.cancelled


def test_a_failed_step_is_one_error_event_in_the_common_shape():
    out, req = collect([Text("a"), Failed("inference failed")], lambda reqs: GenerateEncoder(None))
    assert out[-1] == {"error": {"type": "inference_error", "message": "inference failed", "field": None}}


def test_completion_chunks_echo_the_prompt_once_and_end_after_every_choice():
    events = [Text("x", 0), Text("p", 1), Done("stop", "x", 3, 1, index=0), Text("q", 1), Done("length", "pq", 3, 2,
                                                                                                index=1)]
    out, req = collect(events, lambda reqs: CompletionEncoder("m", reqs, TOK, echo=["Q: "], include_usage=True), n=2)
    texts = [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in out if c["choices"]]
    assert texts == [(0, "Q: x"), (1, "Q: p"), (0, ""), (1, "q"), (1, "")]
    assert out[-1]["choices"] == [] and out[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3,
                                                             "total_tokens": 6}  # the prompt counted once
    assert not req.cancelled
    whole = CompletionEncoder("m", [request(2)], TOK, echo=["Q: "]).whole(
        [Done("length", "yz", 3, 2, index=0), Done("stop", "w", 3, 1, index=1)])
    assert [c["text"] for c in whole["choices"]] == ["Q: yz", "Q: w"] and whole["usage"]["completion_tokens"] == 3


def test_log_probabilities_in_both_shapes():
    x, y = TOK.encode("xy")
    lps = [(x, -0.5, [(x, -0.5), (y, -1.5)]), (y, -0.25, [(y, -0.25)])]
    legacy = CompletionEncoder("m", [request(prompt=TOK.encode("ab"))], TOK, echo=["ab"]).whole(
        [Done("length", "xy", 2, 2, index=0, logprobs=lps, prompt_logprobs=[None, -2.0])])
    lp = legacy["choices"][0]["logprobs"]
    assert lp["tokens"] == ["a", "b", "x", "y"] and lp["token_logprobs"] == [None, -2.0, -0.5, -0.25]
    assert lp["top_logprobs"] == [None, None, {"x": -0.5, "y": -1.5}, {"y": -0.25}] and lp["text_offset"] == [0, 1, 2, 3]
    chat = ChatEncoder("m", [request()], TOK).whole([Done("length", "xy", 2, 2, index=0, logprobs=lps)])
    content = chat["choices"][0]["logprobs"]["content"]
    assert content[0] == {"token": "x", "logprob": -0.5, "bytes": [120],
                          "top_logprobs": [{"token": "x", "bytes": [120], "logprob": -0.5},
                                           {"token": "y", "bytes": [121], "logprob": -1.5}]}
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"] == {"role": "assistant",
                                                                                     "content": "xy"}


def test_chat_chunks_start_with_the_role():
    out, _ = collect([Text("hi"), Text("!"), Done("stop", "hi!", 4, 2)], lambda reqs: ChatEncoder("m", reqs, TOK))
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": "hi!"}
    assert out[-1]["choices"][0]["delta"] == {} and out[-1]["choices"][0]["finish_reason"] == "stop"
    assert out[0]["object"] == "chat.completion.chunk"


def test_a_whole_answer_channel_keeps_only_the_final_event():
    ch = Channel(final_only=True)
    ch.put(Text("a"))
    ch.put(Done("length", "a", 0, 1))
    assert [type(e) for e in ch.items] == [Done]


def test_paced_text_waits_for_not_before_but_a_final_event_wakes_the_writer_at_once():
    import time

    async def main():
        ch = Channel()
        ch.expect = 1
        ch.not_before = time.monotonic() + 60  # a write just happened: text is held back
        taker = asyncio.ensure_future(ch.take())
        ch.put(Text("a"))
        await asyncio.sleep(0.01)
        held = not taker.done()
        ch.put(Done("length", "a", 1, 1))
        got = await asyncio.wait_for(taker, 5)
        ch.not_before = 0.0  # the pace has passed: text alone wakes it
        taker = asyncio.ensure_future(ch.take())
        ch.put(Text("b"))
        return held, got, await asyncio.wait_for(taker, 5)
    held, got, later = asyncio.run(main())
    assert held and [type(e).__name__ for e in got] == ["Text", "Done"] and [e.text for e in later] == ["b"]
