"""Guards at the HTTP connection, below the app: what a hostile or broken client can hold.

uvicorn arms no timer on a new connection and none while headers arrive, so a client that connects and
sends nothing (or one header byte a second) holds a connection forever, and it accepts connections
without limit. `GuardedProtocol` (uvicorn's httptools protocol, with two additions) closes a connection
whose request headers are not complete within `header_timeout` seconds of its start (408), refuses a
connection beyond `max_connections` open ones (503 with Retry-After), both in the service's JSON error
shape, and aborts a connection whose client has left writes unread for `send_timeout` seconds (the kernel
buffers are full and the transport paused): the stream it was reading is cancelled. The keep-alive and
body read timeouts are set elsewhere (uvicorn's `timeout_keep_alive`; middleware.py).
"""
from __future__ import annotations

import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import error_body, json_bytes

log = logging.getLogger("rnnserve")


def _answer(status: int, reason: str, kind: str, message: str, extra: str = "") -> bytes:
    body = json_bytes(error_body(kind, message))
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n").encode() + body


class GuardedProtocol(HttpToolsProtocol):
    header_timeout = 10.0
    max_connections = 1024
    send_timeout = 30.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self._send_timer = None
        if len(self.connections) > self.max_connections:
            transport.write(_answer(503, "Service Unavailable", "overloaded",
                                    f"too many open connections (limit {self.max_connections}); retry shortly",
                                    "retry-after: 1\r\n"))
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(_answer(408, "Request Timeout", "request_timeout",
                                         f"request headers not received within {self.header_timeout:g} s"))
            self.transport.close()

    def on_message_begin(self) -> None:  # a request starts: its headers have header_timeout to arrive
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def pause_writing(self) -> None:  # the client is not taking what was written: a clock starts
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout, self._client_too_slow)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _client_too_slow(self) -> None:
        self._send_timer = None
        log.info(json.dumps({"event": "client_too_slow", "client": "%s:%d" % self.client if self.client else None,
                             "why": f"writes left unread for {self.send_timeout:g} s"}))
        self.transport.abort()  # close() would wait for the unread data forever

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)


def protocol(header_timeout: float, max_connections: int, send_timeout: float) -> type[GuardedProtocol]:
    """A protocol class with these limits (uvicorn takes a class, not an instance)."""
    return type("RnnserveProtocol", (GuardedProtocol,), {"header_timeout": header_timeout,
                                                         "max_connections": max_connections,
                                                         "send_timeout": send_timeout})


def check_uvicorn() -> list[str]:
    """What GuardedProtocol relies on in uvicorn's httptools protocol, missing from the installed uvicorn."""
    missing = [name for name in ("connection_made", "connection_lost", "on_message_begin", "on_headers_complete",
                                 "pause_writing", "resume_writing")
               if not callable(getattr(HttpToolsProtocol, name, None))]
    missing += [name for name in ("connections", "loop") if name not in HttpToolsProtocol.__init__.__code__.co_names]
    return missing
