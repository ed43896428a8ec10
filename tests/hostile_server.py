"""A small EDIS-shaped server that answers whatever a test tells it to (not a test module).

Unlike the simulator, which models the provider faithfully, ``HostileServer`` is an attacker or
a broken proxy: each endpoint's answer is a handler the test sets (mismatched session entries,
200s without success, escape sequences, echoes of the request in every encoding, slow drips,
gzip bombs, 100 MiB of garbage). It serves the session URL and the one api host on the same
loopback port, and logs every request it received (endpoint and form), so a test can assert
what was, and what was never, sent. With ``ssl`` it serves HTTPS and counts TLS handshake
attempts (every ClientHello, successful or not).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]

IMAGE = "cloudinit_debian-bookworm"
KVM_IDS = ("kvm_100001_200001", "kvm_100002_200002")


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    endpoint: str
    form: Mapping[str, str]


class HostileServer:
    """Serve ``/kvm/v2/<endpoint>`` with per-endpoint handlers (``answer``); log every request.

    Defaults answer like a healthy provider for ``kvm_ids`` so a test changes only the part it
    is about. Use as ``async with HostileServer() as server:``.
    """

    def __init__(
        self, *, kvm_ids: tuple[str, ...] = KVM_IDS, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.kvm_ids = kvm_ids
        self.log: list[Seen] = []
        self.handshakes = 0
        self._ssl = ssl_context
        if ssl_context is not None:
            ssl_context.sni_callback = self._hello
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.handlers: dict[str, Handler] = {
            "get/auth": self._auth,
            "get/images": _ok([IMAGE]),
            "set/reinstall": _ok(None),
            "get/power": _ok("server powered on"),
            "get/details": _ok({"hostname": "h", "ip": ["127.0.0.1"]}),
        }

    def _hello(self, _sock: Any, _name: str | None, _ctx: ssl.SSLContext) -> None:
        self.handshakes += 1

    @property
    def session_url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def api_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def entry(self, key: str, **override: object) -> dict[str, object]:
        """A healthy session entry for the VPS ``key`` (fields overridable)."""
        return {
            "kvm_id": key,
            "api_host": self.api_host,
            "signature": f"Sig-{key}-s3cr3t",
            "valid_until": int(time.time()) + 3600,
            "suspended": "n",
            **override,
        }

    def entries(self) -> dict[str, object]:
        return {kvm_id: self.entry(kvm_id) for kvm_id in self.kvm_ids}

    def answer(self, endpoint: str, handler: Handler) -> None:
        """Answer ``endpoint`` with ``handler`` from now on."""
        self.handlers[endpoint] = handler

    def sent(self, endpoint: str) -> list[Mapping[str, str]]:
        """The forms received for ``endpoint``."""
        return [seen.form for seen in self.log if seen.endpoint == endpoint]

    async def _auth(self, _request: web.Request, _form: dict[str, str]) -> web.StreamResponse:
        return web.json_response({"status": "success", "data": self.entries()})

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["endpoint"]
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.log.append(Seen(endpoint, form))
        handler = self.handlers.get(endpoint)
        if handler is None:
            return web.json_response({"error": "no such endpoint", "code": 404}, status=404)
        return await handler(request, form)

    async def __aenter__(self) -> HostileServer:
        app = web.Application()
        app.router.add_post("/kvm/v2/{endpoint:.+}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# -- answers -----------------------------------------------------------------------------


def _ok(data: object) -> Handler:
    return json_answer({"status": "success", "data": data})


def json_answer(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Handler:
    """Answer with ``body`` as JSON (already-encoded text or bytes are sent as they are)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw_answer(raw, status, {"Content-Type": "application/json", **(headers or {})})


def raw_answer(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Handler:
    async def handler(_request: web.Request, _form: dict[str, str]) -> web.StreamResponse:
        return web.Response(body=body, status=status, headers=dict(headers or {}))

    return handler


def echo(render: Callable[[dict[str, str]], str], status: int = 200) -> Handler:
    """Answer with an error whose text quotes the request, as ``render(form)`` writes it."""

    async def handler(_request: web.Request, form: dict[str, str]) -> web.StreamResponse:
        body = {"status": "error", "message": render(form)}
        return web.Response(text=json.dumps(body), status=status, content_type="application/json")

    return handler


def drip(interval: float, before_headers: float = 0.0) -> Handler:
    """Wait ``before_headers`` seconds, then trickle a body one byte per ``interval`` for
    ever (until the client goes away)."""

    async def handler(request: web.Request, _form: dict[str, str]) -> web.StreamResponse:
        await asyncio.sleep(before_headers)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            await resp.write(b'{"status": "success", "data": "')
            while True:
                await resp.write(b"x")
                await asyncio.sleep(interval)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    return handler


def stream(chunk: bytes, count: int, headers: Mapping[str, str] | None = None) -> Handler:
    """Send ``chunk`` ``count`` times (100 MiB of garbage with a 1 MiB chunk and 100)."""

    async def handler(request: web.Request, _form: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=dict(headers or {}))
        await resp.prepare(request)
        try:
            for _ in range(count):
                await resp.write(chunk)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    return handler


_BOMBS: dict[int, bytes] = {}


def gzip_bomb(size: int) -> bytes:
    """Return a gzip stream that inflates to ``size`` bytes of a JSON-looking string (cached)."""
    if size not in _BOMBS:
        packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        parts = [packer.compress(b'{"status": "success", "data": "')]
        block = b"A" * (1 << 20)
        for _ in range(size // len(block)):
            parts.append(packer.compress(block))
        parts.append(packer.compress(b'"}'))
        parts.append(packer.flush())
        _BOMBS[size] = b"".join(parts)
    return _BOMBS[size]


def gzipped(body: bytes) -> bytes:
    return gzip.compress(body)
