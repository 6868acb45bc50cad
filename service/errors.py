"""The one shape of every error answer: {"error": {"type", "message", "field"}}, field null where none.

`RequestError` is raised anywhere on the request path (schemas, routes, runtime) and turned into a JSON
response by the route layer; the middleware and the SSE writer build the same body with `error_body`, and
the layers that write bytes themselves write them with `json_bytes`.
"""
from __future__ import annotations

import json
from contextlib import contextmanager


def json_bytes(body) -> bytes:
    """A JSON answer's bytes as FastAPI's JSONResponse writes them (compact, UTF-8 as it is): the same bytes
    whichever layer answers."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def error_body(kind: str, message: str, field: str | None = None) -> dict:
    return {"error": {"type": kind, "message": message, "field": field}}


class RequestError(Exception):
    """A 4xx/5xx answer with a machine-readable type, a sentence for people, and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None, kind: str = "invalid_request",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.kind, self.headers = status, message, field, kind, headers

    def body(self) -> dict:
        return error_body(self.kind, self.message, self.field)


def busy(message: str, retry_after: int = 1) -> RequestError:
    """503 with Retry-After: the request was fine, the server cannot take it now."""
    return RequestError(503, message, None, "overloaded", {"Retry-After": str(retry_after)})


@contextmanager
def conversation_errors(field: str):
    """A chat's prompt is its messages as the chat template writes them: an error about the prompt names them."""
    try:
        yield
    except RequestError as e:
        if e.field == "prompt":
            e.field = field
            e.message = f"{field}: as the model's chat template writes them: {e.message.removeprefix('prompt: ')}"
        raise
