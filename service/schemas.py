"""Request bodies (pydantic), decoded from raw bytes so that malformed JSON is a 400 and a bad field a
422 naming the field. Each generation request builds its own `SamplingParams`."""
from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import (MAX_CHOICES, MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_MESSAGES, MAX_PROMPT_CHARS, MAX_PROMPTS, MAX_STOP,
                     MAX_STOP_CHARS, MAX_TEXT_CHARS, MAX_TEXTS, MAX_TOKENS, MAX_TOP_LOGPROBS)
from .errors import RequestError
from .sampler import SamplingParams
from .structured import ConstraintFields

_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}  # pydantic's names of a union's branches
BIG_BODY = 64 << 10  # bytes: a body past this is parsed off the event loop


def _union_tag(p) -> bool:
    """A segment pydantic adds to a location for one branch of a union (`str`, `list[InputMessage]`)."""
    return isinstance(p, str) and (p in _UNION_TAGS or "[" in p)


def _field_name(loc) -> str:
    return ".".join(str(p) for p in loc if p != "body" and not _union_tag(p)) or "body"


def validation_error(e: ValidationError | list) -> RequestError:
    errors = e.errors() if isinstance(e, ValidationError) else e
    # of a union's branches, the one the value was meant for: not the "should be a valid string" of another
    branches = [x for x in errors if any(_union_tag(p) for p in x.get("loc", ())) and not x["type"].endswith("_type")]
    if branches and len(errors) > 1:
        errors = branches + [x for x in errors if x not in branches]
    first = errors[0]
    if first.get("type") == "json_invalid":
        return RequestError(400, f"body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                            "body", "invalid_json")
    name = _field_name(first.get("loc", ()))
    msg = first["msg"].removeprefix("Value error, ")
    named = re.match(r"([a-z_]+): ", msg) if name == "body" else None
    if named:  # a check across fields names the field it is about
        name, msg = named.group(1), msg[named.end():]
    if first.get("type") == "extra_forbidden":
        msg = "unknown or unsupported field (this server ignores none)"
    elif first.get("type") == "missing":
        msg = "field required"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return RequestError(422, f"{name}: {msg}{more}", name, "invalid_value")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(raw: bytes):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"body is not UTF-8 (byte {e.start})", "body", "invalid_json") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise RequestError(400, "body nests too deeply", "body", "invalid_json") from None
    except ValueError as e:
        raise RequestError(400, f"body is not valid JSON: {e}", "body", "invalid_json") from None


def _lone_surrogate(obj, path: str = ""):
    """(field path, code point) of the first string, key or value, holding a lone surrogate: JSON can carry
    "\ud800" escapes, but they are not text, cannot be written back as UTF-8 and never reach a model."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError as e:
            return path or "body", ord(obj[e.start])
    elif isinstance(obj, dict):
        for k, v in obj.items():
            hit = _lone_surrogate(k, path or "body") or _lone_surrogate(v, f"{path}.{k}" if path else str(k))
            if hit:
                return hit
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            hit = _lone_surrogate(v, f"{path}.{i}" if path else str(i))
            if hit:
                return hit
    return None


def parse(model: type[BaseModel], raw: bytes) -> BaseModel:
    obj = parse_json(raw)
    if not isinstance(obj, dict):
        raise RequestError(422, "body must be a JSON object", "body", "invalid_value")
    hit = _lone_surrogate(obj)
    if hit:
        field, cp = hit
        raise RequestError(422, f"{field}: holds a lone surrogate (U+{cp:04X}), which is not text; send valid "
                                "Unicode", field.split(".")[0], "invalid_value")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise validation_error(e) from None


async def parse_body(model: type[BaseModel], raw: bytes):
    """Decode a body; a big one (up to the 1 MB limit: 256 texts) off the event loop, so that parsing and
    validating it never holds up the writes of the streams."""
    if len(raw) > BIG_BODY:
        return await asyncio.to_thread(parse, model, raw)
    return parse(model, raw)


Prompt = Field(default="", max_length=MAX_PROMPT_CHARS,
               description=f"text to continue (may be empty; at most {MAX_PROMPT_CHARS} characters)")


class SamplingFields(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    temperature: float = Field(1.0, ge=0.0, le=5.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass; 1 = off")
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1, description="same seed, same request -> same text")
    frequency_penalty: Optional[float] = Field(0.0, ge=-2.0, le=2.0,
                                               description="logit -= f x the token's count in the output (OpenAI)")
    presence_penalty: Optional[float] = Field(0.0, ge=-2.0, le=2.0,
                                              description="logit -= p once a token is in the output (OpenAI)")
    repetition_penalty: Optional[float] = Field(1.0, gt=0.0, le=10.0,
                                                description="a token of the prompt or output: logit / r if positive, "
                                                            "x r if negative (HF, vLLM); 1 = off")
    logit_bias: Optional[dict[str, float]] = Field(None, description="token id -> bias in -100..100 (OpenAI)")
    min_p: Optional[float] = Field(0.0, ge=0.0, le=1.0, description="drop tokens less likely than min_p x the most "
                                                                     "likely one (vLLM); 0 = off")

    @field_validator("temperature", "top_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "min_p",
                     mode="before")
    @classmethod
    def _numbers_only(cls, v):
        if isinstance(v, (str, bool)):
            raise ValueError("must be a number")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        if not v:
            return {}
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} token ids")
        out = {}
        for k, b in v.items():
            if not k.strip().isdigit():
                raise ValueError(f"key {k!r} is not a token id (a non-negative integer as a string)")
            if not -100 <= b <= 100:
                raise ValueError(f"the bias of token {k} is {b}, outside -100..100")
            out[str(int(k))] = b
        return out

    def neutral(self) -> bool:
        """No penalty, bias or min_p: the row samples as plain."""
        return not (self.frequency_penalty or self.presence_penalty or self.logit_bias or self.min_p) and \
            self.repetition_penalty in (None, 1)

    def controls(self) -> dict:
        """The logits controls as processors.Controls takes them (None means neutral, as OpenAI's clients send)."""
        return {"frequency": self.frequency_penalty or 0.0, "presence": self.presence_penalty or 0.0,
                "repetition": 1.0 if self.repetition_penalty is None else self.repetition_penalty,
                "bias": {int(k): b for k, b in (self.logit_bias or {}).items()}, "min_p": self.min_p or 0.0}

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(self.temperature, 0, self.top_p, self.seed)


def _check_stop(v):
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if len(v) > MAX_STOP:
        raise ValueError(f"at most {MAX_STOP} stop strings")
    for s in v:
        if not s:
            raise ValueError("stop strings must not be empty")
        if len(s) > MAX_STOP_CHARS:
            raise ValueError(f"stop strings are at most {MAX_STOP_CHARS} characters")
    return v


class GenerateRequest(SamplingFields, ConstraintFields):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Prompt
    model: Optional[str] = Field(None, description="a served language model (default: the first)")
    max_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    top_k: int = Field(0, ge=0, le=1_000_000, description="0 = off")
    stop: Optional[Union[str, list[str]]] = Field(None, description=f"up to {MAX_STOP} strings",
                                                  validate_default=True)
    stream: bool = True
    session_id: Optional[str] = Field(None, max_length=128)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        return _check_stop(v)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p, self.seed)


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Optional[str] = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(False, description="a last chunk with the usage of the whole request")


class OpenAIFields(SamplingFields, ConstraintFields):
    """What /v1/completions and /v1/chat/completions share. A field this service does not support is a 422
    naming it: none is ignored."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Optional[str] = None
    top_k: int = Field(0, ge=0, le=1_000_000, description="0 = off (not OpenAI's; as vLLM)")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices: one prefill, its state copied n times")
    stream: bool = False
    stop: Optional[Union[str, list[str]]] = Field(None, validate_default=True)
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = Field(None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        return _check_stop(v)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p, self.seed)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @model_validator(mode="after")
    def _options_with_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only with stream: true")
        return self


class CompletionRequest(OpenAIFields):
    """OpenAI's /v1/completions body."""

    prompt: Union[str, list[str]] = Field("", description=f"a prompt or a list of up to {MAX_PROMPTS}")
    max_tokens: int = Field(16, ge=0, le=MAX_TOKENS, description="0 with echo: score the prompt, generate nothing")
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS,
                                    description="each token's log-probability and the N most likely tokens'")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        prompts = [v] if isinstance(v, str) else v
        if not prompts:
            raise ValueError("give a prompt or a non-empty list of prompts")
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts")
        for i, p in enumerate(prompts):
            if len(p) > MAX_PROMPT_CHARS:
                raise ValueError(f"{'prompt' if isinstance(v, str) else f'prompt[{i}]'} is longer than "
                                 f"{MAX_PROMPT_CHARS} characters")
        return v

    @model_validator(mode="after")
    def _limits(self):
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 only with echo (to score the prompt)")
        if len(self.prompts) * self.n > MAX_CHOICES:
            raise ValueError(f"n: {len(self.prompts)} prompts x {self.n} choices is more than {MAX_CHOICES}")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


TEXT_PARTS = ("text", "input_text", "output_text")  # chat's text part, and the Responses API's


def joined_text(v, what: str = "part"):
    """Message content as clients send it: a string, or a list of text parts ({"type": "text", "text": ...}),
    joined by newlines (as vLLM joins them). A part of another type (an image, audio, a file) is refused by
    name: these models read text."""
    if isinstance(v, str) or not isinstance(v, list):
        return v
    texts = []
    for i, part in enumerate(v):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS:
            raise ValueError(f"{what} {i} is of type {kind!r}: only text parts are read ({', '.join(TEXT_PARTS)}); "
                             "these models read text")
        if not isinstance(part.get("text"), str):
            raise ValueError(f"{what} {i}: a text part needs a string `text`")
        extra = set(part) - {"type", "text", "annotations", "logprobs"}
        if extra:
            raise ValueError(f"{what} {i}: unknown or unsupported field {sorted(extra)[0]!r}")
        texts.append(part["text"])
    return "\n".join(texts)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str = Field(..., max_length=MAX_PROMPT_CHARS,
                         description="a string, or a list of text parts (joined by newlines)")
    name: Optional[str] = Field(None, max_length=64)

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v):
        return joined_text(v)

    def for_template(self) -> dict:
        """As the chat template reads it: `developer` (the newer name) is `system`."""
        d = self.model_dump(exclude_none=True)
        if d["role"] == "developer":
            d["role"] = "system"
        return d


class NoTools(BaseModel):
    """What clients send about tools, as these models have none: an empty list, `none` or `auto`."""
    tools: Optional[list[Any]] = Field(None, description="must be empty: these models have no tool calls")
    tool_choice: Optional[Union[Literal["none", "auto"], dict]] = None
    parallel_tool_calls: Optional[bool] = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v):
        if v:
            raise ValueError("these models have no tool calls: send no tools (or an empty list)")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, v):
        if isinstance(v, dict):
            raise ValueError("these models have no tool calls: a tool cannot be chosen")
        return v


class ChatRequest(OpenAIFields, NoTools):
    """OpenAI's /v1/chat/completions body."""

    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_tokens: Optional[int] = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=MAX_TOKENS)
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _limits(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: only with logprobs: true")
        return self

    @property
    def limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 256

    @property
    def logprobs_top(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Optional[str] = Field(None, min_length=1, max_length=MAX_TEXT_CHARS)
    texts: Optional[list[str]] = Field(None, min_length=1, max_length=MAX_TEXTS)
    model: Optional[str] = None

    @field_validator("texts")
    @classmethod
    def _each_text(cls, v):
        for i, t in enumerate(v or []):
            if not t:
                raise ValueError(f"texts[{i}] is empty")
            if len(t) > MAX_TEXT_CHARS:
                raise ValueError(f"texts[{i}] is longer than {MAX_TEXT_CHARS} characters")
        return v

    @model_validator(mode="after")
    def _one_of(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` or `texts`")
        return self
