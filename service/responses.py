"""OpenAI's Responses API over sessions: POST /v1/responses (streamed with its typed events, or whole),
GET and DELETE /v1/responses/{id}.

A stored response is a session (sessions/): the recurrent state after the turn, and kept with it (the
state's `note`) the response object, the conversation as messages and the length and sha256 of the text the
state has read (its *transcript*). `previous_response_id` is a session turn: the conversation so far plus
the new input is rendered with the model's chat template (chat.py); when the transcript is a prefix of that
text (the default template's turns end with the stop string that starts the next, so it always is), only
the rest is read, from the stored state: exactly what a session continued with that rest computes. When it
is not (new `instructions`, which OpenAI does not carry over, or a template that rewrites earlier turns),
the whole text is read afresh: correct, and the prefix cache makes it cheap. Each response is a session of
its own, so two responses may continue the same one (a branch); the state of the one continued is copied,
never changed. `store: false` keeps nothing: its id cannot be continued or read back. A stored response
lives as long as a session (RNNSERVE_SESSION_TTL); the weights that computed it must still be the model's
(a replaced model: 409).
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .chat import ChatTemplateError
from .config import MAX_MESSAGES, MAX_PROMPT_CHARS, MAX_TOKENS
from .constraints import Spec
from .errors import RequestError, conversation_errors
from .requests import Done, Text
from .sampler import SamplingParams
from .runtime import model_replaced, session_error
from .schemas import ChatMessage, NoTools, SamplingFields, joined_text, parse_body
from .structured import JsonSchemaFormat
from .sessions import OtherModel, SessionError, SessionNotFound, SessionState


class TextFormat(JsonSchemaFormat):
    """The Responses API's `text.format`: text, json_object, or json_schema with name and schema beside it."""
    type: Literal["text", "json_object", "json_schema"] = "text"


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Optional[TextFormat] = None
    verbosity: Optional[Literal["medium"]] = None  # the only one a model without verbosity levels has


class InputMessage(ChatMessage):
    """An input item: a message (`type: "message"` may be given), content a string or input_text parts."""
    type: Optional[Literal["message"]] = None
    id: Optional[str] = Field(None, max_length=128)
    status: Optional[str] = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v):
        return joined_text(v, "content part")


class ResponsesRequest(SamplingFields, NoTools):
    """POST /v1/responses. A field this service does not support is a 422 naming it."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Optional[str] = None
    input: Union[str, list[InputMessage]] = Field(..., description="a string (one user message) or messages")
    instructions: Optional[str] = Field(None, max_length=MAX_PROMPT_CHARS,
                                        description="a system message for this response (not carried over)")
    previous_response_id: Optional[str] = Field(None, max_length=160)
    max_output_tokens: Optional[int] = Field(None, ge=1, le=MAX_TOKENS)
    text: Optional[TextOptions] = None
    store: Optional[bool] = True
    stream: Optional[bool] = False
    metadata: Optional[dict[str, str]] = Field(None, max_length=16)
    user: Optional[str] = Field(None, max_length=256)
    top_k: int = Field(0, ge=0, le=1_000_000, description="0 = off (not OpenAI's; as vLLM)")
    truncation: Optional[Literal["disabled", "auto"]] = Field(
        None, description="nothing is ever truncated: a recurrent state has no context window")

    @field_validator("input")
    @classmethod
    def _input(cls, v):
        if isinstance(v, list) and not 1 <= len(v) <= MAX_MESSAGES:
            raise ValueError(f"give 1 to {MAX_MESSAGES} messages")
        if isinstance(v, str) and len(v) > MAX_PROMPT_CHARS:
            raise ValueError(f"longer than {MAX_PROMPT_CHARS} characters")
        return v

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p, self.seed)

    def messages(self) -> list[dict]:
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        return [{"role": m.for_template()["role"], "content": m.content} for m in self.input]

    def constraint_spec(self) -> Spec | None:
        f = self.text.format if self.text else None
        if f is None or f.type == "text":
            return None
        if f.type == "json_object":
            return Spec("json_object", None, "text.format")
        if f.schema_ is None:
            raise RequestError(422, "text.format: schema is required with type json_schema", "text",
                               "invalid_value")
        return Spec("json_schema", f.schema_, "text.format.schema")

    def format_echo(self) -> dict:
        f = self.text.format if self.text and self.text.format else TextFormat()
        return {"format": f.model_dump(by_alias=True, exclude_none=True)}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _sid(response_id: str, field: str) -> str:
    if not response_id.startswith("resp_") or len(response_id) < 6:
        raise RequestError(404, f"{field}: {response_id!r} is not a response id of this server", field, "not_found")
    return response_id[5:]


class ResponseEncoder:
    """The response object and its stream of typed events (each SSE event named after its `type`)."""
    done_line = b""  # the Responses stream ends with response.completed, not [DONE]

    def __init__(self, rid: str, model: str, r: ResponsesRequest):
        self.rid, self.model, self.r = rid, model, r
        self.msg_id = "msg_" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.seq = 0
        self.text_so_far = ""
        self.started = False
        self.finals: list[Done] = []

    def response(self, done: Done | None) -> dict:
        status, incomplete, output, usage = "in_progress", None, [], None
        if done is not None:
            status = "completed" if done.finish_reason == "stop" else "incomplete"
            if done.finish_reason == "length":
                incomplete = {"reason": "max_output_tokens"}
            output = [self._message(done.text, "completed" if status == "completed" else "incomplete")]
            usage = {"input_tokens": done.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                     "output_tokens": done.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": done.prompt_tokens + done.completion_tokens}
        r = self.r
        return {"id": self.rid, "object": "response", "created_at": self.created, "status": status,
                "model": self.model, "output": output, "error": None, "incomplete_details": incomplete,
                "instructions": r.instructions, "max_output_tokens": r.max_output_tokens,
                "metadata": r.metadata or {}, "parallel_tool_calls": True, "previous_response_id":
                r.previous_response_id, "temperature": r.temperature, "top_p": r.top_p, "tool_choice": "none",
                "tools": [], "text": r.format_echo(), "store": r.store is not False, "truncation": "disabled",
                "user": r.user, "usage": usage}

    def _message(self, text: str, status: str) -> dict:
        content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {"id": self.msg_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def _event(self, kind: str, **fields) -> bytes:
        body = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    def start(self) -> bytes:
        """response.created, response.in_progress, the message and its text part opened."""
        self.started = True
        head = self.response(None)
        return b"".join([
            self._event("response.created", response=head), self._event("response.in_progress", response=head),
            self._event("response.output_item.added", output_index=0, item={**self._message(None, "in_progress")}),
            self._event("response.content_part.added", item_id=self.msg_id, output_index=0, content_index=0,
                        part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})])

    def text(self, ev: Text) -> bytes:
        self.text_so_far += ev.text
        head = b"" if self.started else self.start()
        return head + self._event("response.output_text.delta", item_id=self.msg_id, output_index=0,
                                  content_index=0, delta=ev.text, logprobs=[])

    def done(self, ev: Done) -> bytes:
        self.finals.append(ev)
        head = b"" if self.started else self.start()
        whole = self.response(ev)
        item = whole["output"][0]
        part = item["content"][0]
        return head + b"".join([
            self._event("response.output_text.done", item_id=self.msg_id, output_index=0, content_index=0,
                        text=ev.text, logprobs=[]),
            self._event("response.content_part.done", item_id=self.msg_id, output_index=0, content_index=0,
                        part=part),
            self._event("response.output_item.done", output_index=0, item=item),
            self._event("response.completed" if whole["status"] == "completed" else "response.incomplete",
                        response=whole)])

    def whole(self, finals: list[Done]) -> dict:
        return self.response(finals[0])

    def end(self):
        return None


class Responses:
    """The three endpoints, over the runtime's sessions."""

    def __init__(self, runtime, answer):
        self.rt, self.answer = runtime, answer  # answer(reqs, encoder, stream, request): streamed or whole

    async def _stored(self, response_id: str, field: str, model: str | None = None) -> tuple[str, SessionState, dict]:
        """A stored response: (model, state, record). Read by claiming its session and letting go at once."""
        sid = _sid(response_id, field)
        for name in [model] if model else list(self.rt.lms):
            store = self.rt.store
            try:
                claim = await self.rt._store(store.claim, sid, name)
            except SessionNotFound:
                break
            except OtherModel:
                if model is None:
                    continue  # another served model's: look there
                raise
            except SessionError as e:
                err = session_error(e)
                err.field = field
                err.message = err.message.replace("session_id", field)
                raise err from None
            await self.rt._store(store.release, claim)
            if claim.state is None or not claim.state.note:
                break
            return name, claim.state, json.loads(claim.state.note)
        raise RequestError(404, f"{field}: no stored response {response_id!r} (never stored, `store: false`, "
                                "deleted or expired)", field, "not_found")

    async def create(self, request):
        r: ResponsesRequest = await parse_body(ResponsesRequest, await request.body())
        rt = self.rt
        model = rt.lm_name(r.model)
        art = rt.lms[model]
        fmt = rt.chat[model]
        history, start, transcript = [], None, None
        if r.previous_response_id:
            _, start, record = await self._stored(r.previous_response_id, "previous_response_id", model)
            if start.artifact not in ("", art.fingerprint):
                err = model_replaced(r.previous_response_id, model, start.artifact, art.fingerprint)
                err.field, err.message = "previous_response_id", err.message.replace("session_id", "previous_response_id")
                raise err
            history, transcript = record["history"], record["transcript"]
        new = r.messages()
        system = [{"role": "system", "content": r.instructions}] if r.instructions else []
        try:
            full = fmt.render(system + history + new)
        except ChatTemplateError as e:
            raise RequestError(422, f"input: {e}", "input", "invalid_value") from None
        if transcript and len(full) >= transcript["chars"] and _sha(full[:transcript["chars"]]) == transcript["sha256"]:
            prompt = full[transcript["chars"]:]  # the state has read the rest
        else:
            prompt, start = full, None  # read afresh
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RequestError(422, f"input: the text the model reads for this turn is {len(prompt):,} characters, "
                                    f"more than {MAX_PROMPT_CHARS:,}", "input", "invalid_value")
        if len(history) + len(new) + 1 > MAX_MESSAGES * 4:
            raise RequestError(422, f"previous_response_id: the conversation holds more than {MAX_MESSAGES * 4} "
                                    "messages; start a new one", "previous_response_id", "invalid_value")
        controls = await rt.controls(model, r)
        sid = (await rt.create_session(model))[0] if r.store is not False else None
        rid = "resp_" + (sid or uuid.uuid4().hex[:24])
        encoder = ResponseEncoder(rid, model, r)

        def note(done: Done) -> str:
            read = full + done.text + done.tail  # everything the state has now read, the start text aside
            return json.dumps({"response": encoder.response(done), "history": history + new + [
                {"role": "assistant", "content": done.text}], "transcript": {"chars": len(read), "sha256": _sha(read)}},
                ensure_ascii=False)

        try:
            with conversation_errors("input"):
                req = await rt.submit(model=model, prompt=prompt, max_tokens=r.max_output_tokens or 256,
                                      sampling=r.sampling_params(), stop=fmt.stop, session_id=sid,
                                      stream=bool(r.stream), controls=controls, start=start, note=note if sid else None)
        except BaseException:
            if sid:
                await rt.delete_session(sid)
            raise
        return await self.answer([req], encoder, bool(r.stream), request)

    async def get(self, response_id: str):
        _, _, record = await self._stored(response_id, "response_id")
        return record["response"]

    async def delete(self, response_id: str):
        name, _, _ = await self._stored(response_id, "response_id")
        await self.rt.delete_session(_sid(response_id, "response_id"))
        return {"id": response_id, "object": "response", "deleted": True}
