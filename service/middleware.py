"""The edge of every HTTP request, before any route: API key, content type, body-size limit, request
metrics and one JSON log line. Pure ASGI, so streamed responses pass straight through."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from starlette.requests import Request

from .config import Config, replica_name
from .errors import RequestError, json_bytes
from .metrics import ServiceMetrics

log = logging.getLogger("rnnserve")

ENDPOINTS = ("/", "/generate", "/classify", "/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/models",
             "/sessions", "/info", "/metrics", "/health", "/live")
JSON_POSTS = ("/generate", "/classify", "/v1/completions", "/v1/chat/completions", "/v1/responses", "/sessions")
OPEN = ("/", "/health", "/live")  # the playground page and the probes need no API key
QUIET = ("/health", "/live", "/metrics")  # not logged: scraped every few seconds


def endpoint_label(path: str) -> str:
    """The metrics label of a path: the endpoint's route, never the raw path (ids would explode the series)."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/responses/"):
        return "/v1/responses/{id}"
    return "/sessions/{id}" if path.startswith("/sessions/") else "other"


class EdgeMiddleware:
    def __init__(self, app, config: Config, metrics: ServiceMetrics, worker: int = 0, direct: dict | None = None):
        self.app, self.config, self.metrics = app, config, metrics
        self.direct = direct if direct is not None else {}  # path -> handler(Request) -> Response, called here
        # which replica and which of its workers answered
        self.who = [(b"x-rnnserve-replica", replica_name(config).encode("latin-1", "replace")),
                    (b"x-rnnserve-worker", str(worker).encode())]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", ()), *self.who]
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            self._check_key(path, headers)
            if method == "POST" and path in JSON_POSTS:
                body = await self._read_json_body(headers, receive)
                if body is None:
                    return  # the client left while sending
                receive = _replay(body, receive)
                handler = self.direct.get(path)
                if handler is not None:  # the generation endpoints: no router walk, no per-layer wrappers
                    response = await handler(Request(scope, receive))
                    return await response(scope, receive, send_wrapper)
            return await self.app(scope, receive, send_wrapper)
        except RequestError as e:
            return await _reject(send_wrapper, e)
        finally:
            seconds = time.perf_counter() - t0
            self.metrics.requests.labels(endpoint_label(path), str(status["code"])).inc()
            self.metrics.request_seconds.labels(endpoint_label(path)).observe(seconds)
            if path not in QUIET:
                log.info(json.dumps({"method": method, "path": path, "status": status["code"],
                                     "ms": round(seconds * 1000, 1)}))

    def _check_key(self, path: str, headers: dict) -> None:
        key = self.config.api_key
        if not key or path in OPEN:
            return
        auth = headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
        # constant time: how long a wrong key takes says nothing about how much of it was right
        if not hmac.compare_digest(given.encode("latin-1"), key.encode("utf-8")):
            raise RequestError(401, "missing or wrong API key (send Authorization: Bearer KEY or X-API-Key: KEY)",
                               None, "unauthorized")

    async def _read_json_body(self, headers: dict, receive) -> bytes | None:
        """The whole body of a JSON POST, refused early when it is not JSON or too large."""
        # A missing Content-Type is refused too: a web page elsewhere can POST a body without one (a "simple"
        # request, no CORS preflight) to a server on this machine; with application/json it cannot.
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            said = f"not {ctype!r}" if ctype else "and the request has no Content-Type"
            raise RequestError(415, f"content type must be application/json, {said}", "content-type",
                               "unsupported_media_type")
        limit = self.config.max_body_bytes
        deadline = asyncio.get_running_loop().time() + self.config.body_timeout
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise RequestError(413, f"body of {int(length)} bytes is larger than the limit of {limit} bytes",
                               "body", "body_too_large")
        chunks, size, more = [], 0, True  # a chunked body has no length: count while reading
        timeout = self.config.body_timeout
        while more:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestError(408, f"request body not received within {timeout:g} s", "body", "request_timeout",
                                   {"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body is larger than the limit of {limit} bytes", "body", "body_too_large")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, then the connection's own messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _reject(send, e: RequestError) -> None:
    body = json_bytes(e.body())
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (e.headers or {}).items()]
    await send({"type": "http.response.start", "status": e.status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})
