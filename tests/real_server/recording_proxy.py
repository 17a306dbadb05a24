"""A recording HTTP proxy between Chunkwise and a real model server: the provider's side of every request.

The server (llama-cpp-python) keeps no request log, so the test counts here what crossed the wire: each
request's model and output cap, and each reply's status, `usage` and `finish_reason`, as the server sent them.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


@dataclass
class Exchange:
    path: str
    model: str | None
    max_tokens: int | None
    max_completion_tokens: int | None
    response_format: str | None
    status: int | None  # None: the server did not answer (connection error)
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    seconds: float
    client_gone: bool  # Chunkwise had hung up (its deadline) before the reply came back


class RecordingProxy:
    """`http://127.0.0.1:<port>/v1` forwarding to `upstream` (a URL ending in /v1); `exchanges` in order."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=900)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # the test reads `exchanges`, not stderr
                pass

            def do_GET(self) -> None:
                proxy._forward(self, None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy._forward(self, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        request: dict[str, Any] = {}
        if body:
            try:
                request = json.loads(body)
            except ValueError:
                request = {}
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
        started = time.monotonic()
        status = None
        content = b""
        reply_headers: dict[str, str] = {}
        try:
            reply = self._client.request(
                handler.command, self.upstream + handler.path, content=body, headers=headers
            )
            status, content = reply.status_code, reply.content
            reply_headers = {
                k: v for k, v in reply.headers.items() if k.lower() in ("content-type", "retry-after")
            }
        except httpx.HTTPError:
            pass
        seconds = time.monotonic() - started
        client_gone = _hung_up(handler.connection)
        try:
            if status is None:
                handler.send_error(502, "upstream unreachable")
            else:
                handler.send_response(status)
                for key, value in reply_headers.items():
                    handler.send_header(key, value)
                handler.send_header("Content-Length", str(len(content)))
                handler.end_headers()
                handler.wfile.write(content)
        except OSError:  # BrokenPipe / ConnectionReset: the client's deadline passed first
            client_gone = True
        if handler.command == "POST":
            self._record(handler.path, request, status, content, seconds, client_gone)

    def _record(
        self,
        path: str,
        request: dict[str, Any],
        status: int | None,
        content: bytes,
        seconds: float,
        gone: bool,
    ) -> None:
        reply: dict[str, Any] = {}
        try:
            reply = json.loads(content) if content else {}
        except ValueError:
            reply = {}
        usage = reply.get("usage") or {}
        choices = reply.get("choices") or [{}]
        fmt = request.get("response_format")
        exchange = Exchange(
            path=path,
            model=request.get("model"),
            max_tokens=request.get("max_tokens"),
            max_completion_tokens=request.get("max_completion_tokens"),
            response_format=fmt.get("type") if isinstance(fmt, dict) else None,
            status=status,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            finish_reason=choices[0].get("finish_reason") if isinstance(choices[0], dict) else None,
            seconds=seconds,
            client_gone=gone,
        )
        with self._lock:
            self.exchanges.append(exchange)


def _hung_up(connection: socket.socket) -> bool:
    """The client closed its end (readable with nothing to read): it gave up waiting for this reply."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
