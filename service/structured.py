"""Structured outputs as requests name them: OpenAI's `response_format` (json_object, json_schema), vLLM's
`guided_json`, `guided_regex`, `guided_choice`, `guided_grammar` and `structured_outputs`; at most one a
request, turned into a constraints.Spec that constraints.py compiles with llguidance."""
from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from .config import MAX_CHOICE_STRINGS, MAX_SCHEMA_BYTES
from .constraints import Spec


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("response", max_length=64)
    description: Optional[str] = Field(None, max_length=1024)
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: text, json_object or json_schema (with `json_schema: {name, schema, strict}`)."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("json_schema: required with type json_schema ({\"name\": ..., \"schema\": {...}})")
        return self


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`: one of json, regex, choice, grammar."""
    model_config = ConfigDict(extra="forbid")
    json_: Optional[Union[dict[str, Any], str]] = Field(None, alias="json")
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None


class ConstraintFields(BaseModel):
    """Structured outputs: OpenAI's `response_format` and vLLM's names (`guided_json`, `guided_regex`,
    `guided_choice`, `guided_grammar`, or `structured_outputs`); at most one. Compiled by llguidance
    (constraints.py): a constraint that does not compile is a 422 with the library's reason."""

    response_format: Optional[ResponseFormat] = None
    _spec: Optional[Spec] = PrivateAttr(None)
    guided_json: Optional[Union[dict[str, Any], str]] = Field(None, description="a JSON schema (vLLM)")
    guided_regex: Optional[str] = Field(None, description="a regular expression the text matches (vLLM)")
    guided_choice: Optional[list[str]] = Field(None, description="the text is one of these strings (vLLM)")
    guided_grammar: Optional[str] = Field(None, description="a Lark grammar, llguidance's format (vLLM)")
    structured_outputs: Optional[StructuredOutputs] = None

    @model_validator(mode="after")
    def _one_constraint(self):
        if self.response_format is None and self.guided_json is None and self.guided_regex is None and \
                self.guided_choice is None and self.guided_grammar is None and self.structured_outputs is None:
            return self  # the common request
        given = [k for k in ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")
                 if getattr(self, k) is not None]
        if self.response_format is not None and self.response_format.type != "text":
            given.insert(0, "response_format")
        if len(given) > 1:
            raise ValueError(f"{given[1]}: give one constraint, not {' and '.join(given)}")
        spec = self._build_spec()
        if spec is not None:
            if spec.kind == "choice" and not (1 <= len(spec.value) <= MAX_CHOICE_STRINGS and all(spec.value)):
                raise ValueError(f"{spec.field.split('.')[0]}: 1 to {MAX_CHOICE_STRINGS} non-empty strings")
            if len(spec.key.encode()) > MAX_SCHEMA_BYTES:  # the key is the constraint as JSON text
                raise ValueError(f"{spec.field.split('.')[0]}: larger than {MAX_SCHEMA_BYTES} bytes as JSON")
        self._spec = spec
        return self

    def constraint_spec(self) -> Spec | None:
        """What the request asked for, built once by the validator (None: no constraint)."""
        return self._spec

    def _build_spec(self) -> Spec | None:
        rf = self.response_format
        if rf is not None and rf.type == "json_object":
            return Spec("json_object", None, "response_format")
        if rf is not None and rf.type == "json_schema":
            return Spec("json_schema", rf.json_schema.schema_, "response_format.json_schema.schema")
        if self.guided_json is not None:
            return Spec("json_schema", _as_schema(self.guided_json, "guided_json"), "guided_json")
        for kind in ("regex", "choice", "grammar"):
            if getattr(self, "guided_" + kind) is not None:
                return Spec(kind, getattr(self, "guided_" + kind), "guided_" + kind)
        so = self.structured_outputs
        if so is not None:
            if so.json_ is not None:
                return Spec("json_schema", _as_schema(so.json_, "structured_outputs.json"), "structured_outputs.json")
            for kind in ("regex", "choice", "grammar"):
                if getattr(so, kind) is not None:
                    return Spec(kind, getattr(so, kind), "structured_outputs." + kind)
        return None


def _as_schema(v, field: str) -> dict:
    if isinstance(v, dict):
        return v
    try:
        out = json.loads(v)
    except ValueError:
        raise ValueError(f"{field}: a JSON schema, as an object or a string holding one") from None
    if not isinstance(out, dict):
        raise ValueError(f"{field}: a JSON schema is an object")
    return out
