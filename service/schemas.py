"""Request bodies (pydantic), decoded from raw bytes so that malformed JSON is a 400 and a bad field a
422 naming the field. Each generation request builds its own `SamplingParams`."""
from __future__ import annotations

import json
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import MAX_PROMPT_CHARS, MAX_STOP, MAX_STOP_CHARS, MAX_TEXT_CHARS, MAX_TEXTS, MAX_TOKENS
from .errors import RequestError
from .sampler import SamplingParams


def _field_name(loc) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def validation_error(e: ValidationError | list) -> RequestError:
    errors = e.errors() if isinstance(e, ValidationError) else e
    first = errors[0]
    if first.get("type") == "json_invalid":
        return RequestError(400, f"body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                            "body", "invalid_json")
    name = _field_name(first.get("loc", ()))
    msg = first["msg"].removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
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


Prompt = Field(default="", max_length=MAX_PROMPT_CHARS,
               description=f"text to continue (may be empty; at most {MAX_PROMPT_CHARS} characters)")


class SamplingFields(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    temperature: float = Field(1.0, ge=0.0, le=5.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass; 1 = off")
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1, description="same seed, same request -> same text")

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _numbers_only(cls, v):
        if isinstance(v, (str, bool)):
            raise ValueError("must be a number")
        return v

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


class GenerateRequest(SamplingFields):
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


class CompletionRequest(SamplingFields):
    """OpenAI's /v1/completions body; fields this service has no use for are ignored."""
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: Optional[str] = None
    prompt: Union[str, list[str]] = ""
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS)
    stream: bool = False
    stop: Optional[Union[str, list[str]]] = Field(None, validate_default=True)
    n: int = Field(1, ge=1, le=1)
    echo: bool = False
    user: Optional[str] = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        return _check_stop(v)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("this server takes one prompt per request")
            v = v[0]
        if len(v) > MAX_PROMPT_CHARS:
            raise ValueError(f"at most {MAX_PROMPT_CHARS} characters")
        return v


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
