"""The online engine's HTTP client (resources/llm/transport.py), counted from the server's side: every attempt
the provider receives is one Chunkwise counted, whatever the connection does (dropped mid-body, closed after a
keep-alive reply, refused), and the failures are classified without the request's URL or key."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest
from llm_support import SCHEMA, SHORT_SYSTEM, make_resource, texts

from resources.llm import BudgetScope, ChunkRetryableError, LLMRequest
from resources.llm.errors import classify_transport_error
from resources.llm.transport import OnlineClient, TransportError

REPLY = {
    "id": "chatcmpl-raw",
    "object": "chat.completion",
    "model": "gpt-6-luna",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": json.dumps({"label": "card_arrival", "confidence": 0.9}),
            },
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52},
}


def _run(resource, items):
    return resource.run_prompts(
        items,
        system_prompt=SHORT_SYSTEM,
        schema=SCHEMA,
        schema_name="intent",
        scope=BudgetScope("run", "ds"),
        stage="classify",
    )


class RawServer:
    """An HTTP/1.1 server written on sockets, so the test decides what each connection does: the first request
    on a connection gets a keep-alive 200; the second is read in full and then the connection is closed with no
    reply (the case where a client library might quietly re-send a POST). Counts every request it read."""

    def __init__(self) -> None:
        self.requests = 0
        self.closed_unanswered = 0
        self.targets: list[str] = []
        """each request line's target (absolute-form when the client sent it through this server as a proxy)"""
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _read_request(self, reader: asyncio.StreamReader) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        self.targets.append(head.decode("latin-1").split(" ", 2)[1])
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        with self._lock:
            self.requests += 1
        return True

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._read_request(reader)
            body = json.dumps(REPLY).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            await self._read_request(reader)
            with self._lock:
                self.closed_unanswered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    server = RawServer()
    yield server
    server.stop()


@pytest.mark.parametrize("concurrency", [1, 8])
def test_every_request_the_server_read_was_counted_when_keep_alive_connections_close(
    raw_server, tmp_path, concurrency
):
    class _Sim:  # what make_resource reads
        base_url = f"http://127.0.0.1:{raw_server.port}"
        api_key = "sk-raw-server-key-0123456789"

    resource = make_resource(
        _Sim(),
        state_dir=str(tmp_path),
        max_concurrency=concurrency,
        max_attempts=8,
        circuit_breaker_failures=10_000,
    )
    outcome = _run(resource, [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(24))])
    assert outcome.summary.items_succeeded == 24
    # Counted from the server: no POST was re-sent by the client library behind Chunkwise's back.
    assert raw_server.requests == outcome.summary.requests
    assert raw_server.closed_unanswered == outcome.summary.retries > 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bodies_cut_mid_reply_are_retried_and_each_attempt_is_one_provider_request(start_sim, tmp_path, seed):
    sim = start_sim({"faults": {"drop": 0.3}, "seed": seed})
    resource = make_resource(sim, state_dir=str(tmp_path), max_concurrency=16, max_attempts=10)
    outcome = _run(resource, [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(80, seed))])
    log = sim.requests()
    assert outcome.summary.items_succeeded == 80
    assert len(log) == outcome.summary.requests
    assert sum(r["status"] == "dropped" for r in log) == outcome.summary.retries > 0


def test_a_refused_connection_is_a_connection_error_that_names_no_url_or_key():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def post() -> None:
        async with OnlineClient(
            headers={"Authorization": "Bearer sk-secret-0123456789"}, connections=2, timeout_s=5, tls=None
        ) as client:
            await client.post(f"http://127.0.0.1:{port}/v1/chat/completions?key=sk-secret-0123456789", b"{}")

    with pytest.raises(TransportError) as info:
        asyncio.run(post())
    classified = classify_transport_error(info.value)
    assert (classified.error_class, info.value.timed_out) == ("connection", False)
    for text in (str(info.value), classified.message):
        assert "sk-secret" not in text and str(port) not in text


def test_a_server_that_never_answers_is_a_chunk_retry_not_a_hang(tmp_path):
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) and never reads or replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)

        class _Sim:
            base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
            api_key = "sk-silent-server-0123456789"

        resource = make_resource(
            _Sim(),
            state_dir=str(tmp_path),
            timeout_s=0.5,
            min_timeout_s=0.5,
            max_attempts=2,
            max_concurrency=2,
        )
        with pytest.raises(ChunkRetryableError) as info:
            _run(resource, [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(3))])
    summary = info.value.outcome.summary
    assert summary.timeouts == summary.requests > 0 and summary.items_succeeded == 0


def test_proxies_come_from_the_environment_and_no_proxy_is_honoured(raw_server, tmp_path, monkeypatch):
    proxy = f"http://127.0.0.1:{raw_server.port}"

    class _Provider:  # a host that does not resolve: only a proxy can reach it
        base_url = "http://llm-provider.invalid:9"
        api_key = "sk-behind-a-proxy-0123456789"

    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    resource = make_resource(_Provider(), state_dir=str(tmp_path / "a"), max_concurrency=1, max_attempts=4)
    outcome = _run(resource, [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(3))])
    assert outcome.summary.items_succeeded == 3
    assert raw_server.targets and all(
        t == "http://llm-provider.invalid:9/v1/chat/completions" for t in raw_server.targets
    )

    class _Direct:
        base_url = f"http://127.0.0.1:{raw_server.port}"
        api_key = _Provider.api_key

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    seen = len(raw_server.targets)
    outcome = _run(
        make_resource(_Direct(), state_dir=str(tmp_path / "b"), max_concurrency=1, max_attempts=4),
        [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(3))],
    )
    assert outcome.summary.items_succeeded == 3
    assert raw_server.targets[seen:] and all(t == "/v1/chat/completions" for t in raw_server.targets[seen:])
