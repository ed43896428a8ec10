"""One HTTP exchange, bounded: a total deadline, a cap on the decompressed body, and what
an aiohttp failure says about how far the request got.

Answers of this API are small (a few KiB; the account-wide auth answer grows by ~250 bytes
per VPS; image lists a little more), so each endpoint has a cap on its *decompressed* body,
enforced while reading: the body is read raw (aiohttp's own decompression is off) and
inflated here with a ``max_length``, so a gzip bomb costs at most the cap plus one chunk.
A total deadline covers connect, send and read, so a server trickling one byte a second
cannot hold a worker. Both failures are classified like any other: after the connection was
made the request may have been processed, so a reinstall is *in doubt*.
"""

from __future__ import annotations

import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp

from orchestrator.edis.outcome import TransportFailure, TransportKind
from orchestrator.edis.text import clean

KiB = 1024
MiB = 1024 * KiB

DEFAULT_CAPS: Mapping[str, int] = {
    # The account-wide session answer: ~250 bytes per VPS, so 16 MiB is ~60,000 VPSes.
    "get/auth": 16 * MiB,
    # Image names of one VPS: a few KiB in practice.
    "get/images": 4 * MiB,
}
DEFAULT_CAP = 1 * MiB
"""Every other endpoint (reinstall, power, details) answers a few hundred bytes."""

DEFAULT_DEADLINE = 120.0
"""Seconds one exchange (connect, send, read the whole answer) may take in total."""

_CHUNK = 64 * KiB


@dataclass(frozen=True)
class ExchangeLimits:
    """Bounds of one exchange: ``deadline`` seconds in total, ``caps`` bytes of decompressed
    body per endpoint (``default_cap`` for the others). Raises ``ValueError`` for a bound
    that is not positive."""

    deadline: float = DEFAULT_DEADLINE
    caps: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CAPS))
    default_cap: int = DEFAULT_CAP

    def __post_init__(self) -> None:
        caps = (self.default_cap, *self.caps.values())
        if not self.deadline > 0 or any(c <= 0 for c in caps):
            raise ValueError("exchange deadline and body caps must be positive")

    def cap(self, endpoint: str) -> int:
        """Return the body cap, in bytes, for ``endpoint``."""
        return self.caps.get(endpoint, self.default_cap)


class ExchangeFailed(Exception):
    """An answer arrived but cannot be used; ``failure`` says why (internal to the client)."""

    def __init__(self, failure: TransportFailure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


class Progress(SimpleNamespace):
    """How far one request got, filled in by aiohttp's tracing (``trace_request_ctx``)."""

    connected: bool = False


def tracing() -> aiohttp.TraceConfig:
    """Return the trace config that marks a request's ``Progress`` once it has a connection."""
    config = aiohttp.TraceConfig()

    async def connected(_s: aiohttp.ClientSession, ctx: SimpleNamespace, _p: Any) -> None:
        progress = getattr(ctx, "trace_request_ctx", None)
        if isinstance(progress, Progress):
            progress.connected = True

    config.on_connection_create_end.append(connected)
    config.on_connection_reuseconn.append(connected)
    config.on_request_headers_sent.append(connected)
    return config


async def read_body(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """Read and decompress the body of ``resp``, at most ``cap`` bytes once decompressed.

    Raises ``ExchangeFailed`` (``oversized`` or ``undecodable``) as soon as the cap is passed
    or the encoding cannot be read; never holds more than ``cap`` plus one chunk.
    """
    encoding = resp.headers.get("Content-Encoding", "").strip().lower()
    inflater = _inflater(encoding, resp.status)
    out = bytearray()
    try:
        async for chunk in resp.content.iter_chunked(_CHUNK):
            if inflater is None:
                out += chunk
            else:
                data = inflater.decompress(chunk, cap + 1 - len(out))
                out += data
                while inflater.unconsumed_tail and len(out) <= cap:
                    out += inflater.decompress(inflater.unconsumed_tail, cap + 1 - len(out))
            if len(out) > cap:
                raise ExchangeFailed(
                    TransportFailure(
                        "oversized", f"HTTP {resp.status}: the answer exceeds {_size(cap)}"
                    )
                )
    except zlib.error as exc:
        raise ExchangeFailed(
            TransportFailure("undecodable", f"HTTP {resp.status}: {encoding} body: {exc}")
        ) from None
    return bytes(out)


def _inflater(encoding: str, status: int) -> Any:
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, detected
    raise ExchangeFailed(
        TransportFailure(
            "undecodable", f"HTTP {status}: unsupported Content-Encoding {clean(encoding, 40)}"
        )
    )


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB and n % MiB == 0 else f"{n} bytes"


def failure_of(exc: BaseException, progress: Progress, *, deadline: float) -> TransportFailure:
    """Return what an exception raised during an exchange says about how far it got.

    ``deadline`` is the exchange's total deadline, for the message when it expired.
    """
    if isinstance(exc, ExchangeFailed):
        return exc.failure
    if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
        kind: TransportKind = "deadline" if progress.connected else "connect_deadline"
        return TransportFailure(kind, f"no complete answer within {deadline:g} s")
    if isinstance(exc, aiohttp.ClientError):
        return TransportFailure(_transport_kind(exc), _describe(exc))
    # Anything else (an OSError aiohttp did not wrap, a malformed value): how far it got
    # is all that matters for a resend.
    kind = "reset" if progress.connected else "refused"
    return TransportFailure(kind, _describe(exc))


def _transport_kind(exc: aiohttp.ClientError) -> TransportKind:
    """Map an aiohttp exception to how far the request got. Order matters: subclasses first."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if _is_verification_failure(exc):
        return "tls_verify"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect_timeout"
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.InvalidURL):
        return "refused"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "read_timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    # ClientPayloadError, ClientOSError (ECONNRESET), malformed responses, anything else
    # after the connection was made: the request may have been processed.
    return "reset"


def _is_verification_failure(exc: aiohttp.ClientError) -> bool:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return True
    cause = getattr(exc, "os_error", None) or exc.__cause__
    return isinstance(cause, ssl.SSLCertVerificationError)


def _describe(exc: BaseException) -> str:
    """Describe an exception in one clean line; for a certificate that did not verify, say
    what to do about it."""
    if isinstance(exc, aiohttp.ClientError) and _is_verification_failure(exc):
        host = getattr(getattr(exc, "_conn_key", None), "host", None) or "the server"
        cert = getattr(exc, "certificate_error", None) or exc.__cause__ or exc
        reason = clean(str(getattr(cert, "verify_message", None) or cert), 80)
        return (
            f"{clean(str(host), 80)} ({reason}); if the API uses a private CA set `ca_file` in "
            "the manifest's account, and check that the host name matches its certificate"
        )
    # The exception text names the URL (host and path, no secrets: they travel in the body);
    # some (a malformed answer) quote the server's bytes, hence the cleaning.
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return clean(text, 200)
