"""The online engine's HTTP client: one aiohttp keep-alive pool per stage run, and the plain reply it returns.

Why aiohttp and not httpx here: a stage run sends one POST per item attempt, hundreds per chunk, and on the
2-core machines this runs on the client's own CPU was the run worker's largest cost (28% of it, py-spy). Measured
against the simulator, 64 requests in flight, the same bodies: httpx's AsyncClient (as 8 pools of 8, its fastest
arrangement here) spends 1.9-2.3x the CPU per request of aiohttp's ClientSession (bench/http_client.py,
docs/benchmarks.md "HTTP client CPU per request"); a 20,000-item job's run workers spent 13% less CPU. Everything
else (batch APIs, webhooks, the simulator's tests) stays on httpx: a few requests per chunk at most.

What a caller sees does not depend on the library:
- `WireResponse`: status, case-insensitive headers, the body's bytes, `.json()` and `.text`, as the provider
  adapters' `parse_error` / `rate_headers` read them;
- `TransportError`: a request whose outcome is unknown (refused, dropped, cut off, timed out), with the
  library's exception type name only: never the URL, the headers or the body, so no key reaches a log.

aiohttp never re-sends a POST on its own (it retries only idempotent methods on a dropped keep-alive
connection), so every attempt the provider sees is one the runner counted and reserved for. Proxies from the
environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) apply, as they did with httpx: looked up once per provider origin,
not per request (aiohttp's `trust_env` looks them up, and reads ~/.netrc, in a thread on every request: 5% of a
run worker's CPU). Credentials come from the provider profile's headers, never from ~/.netrc."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL


@dataclass(frozen=True, slots=True)
class WireResponse:
    status_code: int
    headers: Mapping[str, str]
    """case-insensitive (aiohttp's CIMultiDictProxy)"""
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class TransportError(Exception):
    """The request's outcome is unknown: it may or may not have reached the provider (and been billed)."""

    def __init__(self, kind: str, cause: BaseException):
        self.kind = kind
        """"timeout" (the connection or a read timed out) or "connection" (refused, dropped, cut off)"""
        self.cause_name = type(cause).__name__
        super().__init__(f"{kind} ({self.cause_name})")

    @property
    def timed_out(self) -> bool:
        return self.kind == "timeout"


class OnlineClient:
    """One keep-alive pool of up to `connections` connections; `post` sends one JSON body and reads the whole
    reply. Use as an async context manager (the pool is closed on exit)."""

    def __init__(
        self, *, headers: Mapping[str, str], connections: int, timeout_s: float, tls: ssl.SSLContext
    ):
        self._headers = dict(headers)
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, tuple[URL | None, aiohttp.BasicAuth | None]] = {}
        """per request URL (a stage posts to one)"""

    async def __aenter__(self) -> OnlineClient:
        connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=0, ssl=self._tls)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=self._timeout, trust_env=False
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes) -> WireResponse:
        if self._session is None:
            raise RuntimeError("OnlineClient.post outside `async with`")
        proxy, proxy_auth = self._proxy_for(url)
        try:
            async with self._session.post(url, data=body, proxy=proxy, proxy_auth=proxy_auth) as response:
                content = await response.read()
                return WireResponse(response.status, response.headers, content)
        except aiohttp.ServerTimeoutError as exc:  # connect or read timeout (its subclasses)
            raise TransportError("timeout", exc) from None
        except aiohttp.ClientError as exc:
            raise TransportError("connection", exc) from None

    def _proxy_for(self, url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """The environment's proxy for this URL (HTTP_PROXY / HTTPS_PROXY, unless NO_PROXY covers the host)."""
        found = self._proxies.get(url)
        if found is None:
            try:
                found = get_env_proxy_for_url(URL(url))
            except LookupError:  # no proxy for this scheme, or NO_PROXY covers the host
                found = (None, None)
            self._proxies[url] = found
        return found
