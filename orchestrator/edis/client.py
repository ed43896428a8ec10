"""The EDIS Management API client: the only HTTP code of edis-fleet.

One ``EdisClient`` serves one run. It holds two aiohttp sessions:

- a pooled one for the calls that change nothing (auth, images, power, details), whose idle
  keep-alive (2 s by default) stays well below what servers use (5 s and up);
- one that opens a fresh connection for every destructive POST (``set/reinstall``). A POST on
  a pooled connection the server is just closing fails with ``ServerDisconnectedError`` although
  the server never saw it, and a server that acted and then dropped the connection raises the
  same error (DESIGN.md, "The keep-alive race"). On a fresh connection a disconnect can only
  mean "sent, fate unknown", so it is honestly *in doubt*.

Redirects are never followed (aiohttp would re-send the form, with the signature and the root
password, to wherever ``Location`` points). Every exchange is bounded (``orchestrator.edis.wire``:
a total deadline and a cap on the decompressed body). Each attempt is classified by
``orchestrator.edis.outcome.classify`` (which cleans the server's text) and a failure is raised as
the matching ``ApiError`` subclass; the message has every secret of the call masked in all its
encodings, and is withheld whole when it quotes a long run of the user data sent. The client does
not retry: that is the retry policy's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import aiohttp

from orchestrator.clock import SystemClock
from orchestrator.edis.auth import AuthResult, VpsCredentials, http_date, parse_entries
from orchestrator.edis.failures import AUTH, raise_for_auth, raise_unless_accepted
from orchestrator.edis.hosts import HostPolicy
from orchestrator.edis.outcome import (
    Classification,
    HttpAnswer,
    TransportFailure,
    classify,
)
from orchestrator.edis.text import clean, clean_details, scrub
from orchestrator.edis.tls import tls_context
from orchestrator.edis.wire import (
    ExchangeLimits,
    Progress,
    failure_of,
    read_body,
    tracing,
)
from orchestrator.errors import InDoubtError, RejectedError, UnexpectedAnswerError
from orchestrator.model import Attempt, Clock, Outcome
from orchestrator.secrets import Secret
from orchestrator.version import __version__

__all__ = ["AuthResult", "EdisClient", "ExchangeLimits", "VpsCredentials"]

IMAGES = "get/images"
REINSTALL = "set/reinstall"
POWER = "get/power"
DETAILS = "get/details"

# The fields of the session a per-VPS form carries; an endpoint's own fields never replace them.
_SESSION_FIELDS = frozenset({"signature", "kvm_id", "valid_until"})


class EdisClient:
    """Async client for the EDIS Management API. Use as ``async with EdisClient(...) as c:``.

    ``allowed_hosts`` widens the api_host allowlist beyond ``*.edisglobal.com`` (host globs
    or CIDR networks). ``ca_file`` adds a private CA; ``ssl_context`` replaces the TLS set-up
    entirely. ``limits`` bounds every exchange (total deadline, decompressed body caps; see
    ``orchestrator.edis.wire``). ``on_attempt`` is called after every attempt with a
    secret-free ``Attempt``.
    Raises ``HostNotAllowedError`` at construction for a session URL that is not allowed, and
    ``ManifestError`` for a ``ca_file`` that cannot be read as a CA bundle.
    """

    def __init__(
        self,
        *,
        session_url: str,
        email: str,
        password: Secret,
        allowed_hosts: Sequence[str] = (),
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        keepalive_timeout: float = 2.0,
        max_connections: int = 100,
        limits: ExchangeLimits | None = None,
        clock: Clock | None = None,
        on_attempt: Callable[[Attempt], None] | None = None,
    ) -> None:
        self._policy, self._session_base = HostPolicy.for_session_url(session_url, allowed_hosts)
        self._email = email
        self._password = password
        self._clock: Clock = clock or SystemClock()
        self._on_attempt = on_attempt
        if ssl_context is None:
            ssl_context = tls_context(ca_file)
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._limits = limits or ExchangeLimits()
        self._keepalive = keepalive_timeout
        self._max_connections = max_connections
        self._reads: aiohttp.ClientSession | None = None
        self._writes: aiohttp.ClientSession | None = None
        self._allowed_bases: dict[str, str] = {}

    async def __aenter__(self) -> EdisClient:
        self._reads = self._new_session(force_close=False)
        self._writes = self._new_session(force_close=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close both HTTP sessions. Safe to call twice."""
        for session in (self._reads, self._writes):
            if session is not None:
                await session.close()
        self._reads = self._writes = None

    def _new_session(self, *, force_close: bool) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            ssl=self._ssl,
            force_close=force_close,
            keepalive_timeout=None if force_close else self._keepalive,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={
                "User-Agent": f"edis-fleet/{__version__}",
                # Only what wire.read_body inflates, with its cap.
                "Accept-Encoding": "gzip, deflate",
            },
            # Decompression happens in wire.read_body, bounded while reading.
            auto_decompress=False,
            trace_configs=[tracing()],
        )

    # -- calls -------------------------------------------------------------------------

    async def authenticate(self, kvm_id: str | None = None) -> AuthResult:
        """Create a session for the whole account, or for one ``kvm_id``.

        Raises ``AuthenticationError`` when the email/password (or the kvm_id scope) is
        clearly refused — never worth a retry; ``UnexpectedAnswerError`` (final) for an
        answer whose shape the API does not describe, saying what arrived;
        ``TlsVerificationError`` (final) for a certificate that does not verify; and the
        other ``ApiError`` subclasses for transport failures and throttling.
        """
        form = {"email": self._email, "pw": self._password.reveal()}
        if kvm_id is not None:
            form["kvm_id"] = kvm_id
        answer, result = await self._post(
            AUTH, self._session_base, form, kvm_id=kvm_id, destructive=False, secrets=(form["pw"],)
        )
        raise_for_auth(result, kvm_id)
        assert answer is not None  # accepted implies an HTTP answer
        return self._parse_auth(result.data, answer, kvm_id)

    async def images(self, cred: VpsCredentials) -> list[str]:
        """Return the image names this VPS may be reinstalled with. Raises ``ApiError``.

        Names that are not clean one-line text (control characters, over 200 characters)
        are left out: no manifest can select them, and they would reach the terminal.
        """
        data = await self._vps_call(IMAGES, cred, {})
        if not isinstance(data, list) or not all(isinstance(i, str) for i in data):
            raise InDoubtError(
                "image list is not a list of names", endpoint=IMAGES, kvm_id=cred.kvm_id
            )
        return [name for name in data if name and clean(name, 200) == name]

    async def reinstall(
        self,
        cred: VpsCredentials,
        *,
        image: str,
        password: Secret,
        cloudinit_user_data: Secret | None = None,
    ) -> None:
        """Ask for a reinstall. WIPES THE DISK. Returns when the server *accepted* it.

        Sent on a fresh connection. Raises ``InDoubtError`` when the server may have acted
        without us learning the answer, and the other ``ApiError`` subclasses otherwise.
        """
        if not image:
            raise RejectedError("no image given", endpoint=REINSTALL, kvm_id=cred.kvm_id)
        if not password:
            raise RejectedError("no root password given", endpoint=REINSTALL, kvm_id=cred.kvm_id)
        extra = {"image": image, "password": password.reveal()}
        if cloudinit_user_data is not None:
            extra["cloudinit_user_data"] = cloudinit_user_data.reveal()
        await self._vps_call(REINSTALL, cred, extra, destructive=True)

    async def power(self, cred: VpsCredentials) -> str:
        """Return the power state text (e.g. ``server powered on``). Raises ``ApiError``."""
        data = await self._vps_call(POWER, cred, {})
        if not isinstance(data, str):
            raise InDoubtError("power state is not a text", endpoint=POWER, kvm_id=cred.kvm_id)
        return clean(data, 100)

    async def details(self, cred: VpsCredentials) -> dict[str, Any]:
        """Return the VPS's basic details (hostname, ip, hw, suspended). Raises ``ApiError``.

        Server text: every string in it is cleaned (``text.clean``), and ``ip.ipv4`` keeps
        only IPv4 literals (with an optional ``/netmask``), since readiness connects there.
        """
        data = await self._vps_call(DETAILS, cred, {})
        if not isinstance(data, dict):
            raise InDoubtError("details are not an object", endpoint=DETAILS, kvm_id=cred.kvm_id)
        return clean_details(data)

    # -- plumbing ----------------------------------------------------------------------

    async def _vps_call(
        self,
        endpoint: str,
        cred: VpsCredentials,
        extra: dict[str, str],
        *,
        destructive: bool = False,
    ) -> object:
        base = self._checked_base(cred)
        form = _vps_form(cred, extra)
        secrets = (form["signature"], extra.get("password", ""))
        _, result = await self._post(
            endpoint,
            base,
            form,
            kvm_id=cred.kvm_id,
            destructive=destructive,
            secrets=secrets,
            sent=extra.get("cloudinit_user_data", ""),
        )
        raise_unless_accepted(result, endpoint, cred.kvm_id)
        return result.data

    def _checked_base(self, cred: VpsCredentials) -> str:
        # Re-checked on every call, not only at auth time: credentials are plain data and
        # could be built elsewhere; the secret must never go to a host the user did not allow.
        base = self._allowed_bases.get(cred.api_host)
        if base is None:
            base = self._policy.api_base(cred.api_host)
            self._allowed_bases[cred.api_host] = base
        return base

    async def _post(
        self,
        endpoint: str,
        base: str,
        form: dict[str, str],
        *,
        kvm_id: str | None,
        destructive: bool,
        secrets: Sequence[str],
        sent: str = "",
    ) -> tuple[HttpAnswer | None, Classification]:
        session = self._writes if destructive else self._reads
        if session is None:
            raise RuntimeError("EdisClient used outside 'async with'")
        url = f"{base}/kvm/v2/{endpoint}"
        started = self._clock.monotonic()
        attempt: HttpAnswer | TransportFailure
        answer: HttpAnswer | None = None
        progress = Progress()
        deadline = self._limits.deadline
        try:
            async with asyncio.timeout(deadline):
                async with session.post(
                    url, data=form, allow_redirects=False, trace_request_ctx=progress
                ) as resp:
                    body = await read_body(resp, self._limits.cap(endpoint))
                    answer = HttpAnswer(resp.status, body, resp.headers)
                    attempt = answer
        except Exception as exc:
            # asyncio.timeout turns its own expiry into TimeoutError; a cancellation from
            # outside (CancelledError is no Exception) is never swallowed.
            attempt = failure_of(exc, progress, deadline=deadline)
        result = _scrubbed(classify(attempt, now=self._clock.time()), secrets, sent)
        if self._on_attempt is not None:
            self._on_attempt(
                Attempt(
                    endpoint=endpoint,
                    kvm_id=kvm_id,
                    outcome=result.outcome,
                    status=result.status,
                    message=result.message,
                    seconds=self._clock.monotonic() - started,
                )
            )
        return answer, result

    def _parse_auth(self, data: object, answer: HttpAnswer, scope: str | None) -> AuthResult:
        local_time = self._clock.time()
        if not isinstance(data, dict):
            raise UnexpectedAnswerError(
                "the session server said success but sent no account data "
                f"(data is {'missing' if data is None else 'a ' + type(data).__name__})",
                endpoint=AUTH,
                kvm_id=scope,
                status=answer.status,
            )
        credentials, unusable = parse_entries(data, self._policy)
        for cred in credentials.values():
            self._allowed_bases[cred.api_host] = cred.base_url
        return AuthResult(
            credentials=credentials,
            unusable=unusable,
            server_time=http_date(answer.headers.get("Date")),
            local_time=local_time,
        )


def _vps_form(cred: VpsCredentials, extra: dict[str, str]) -> dict[str, str]:
    """Build the form of a per-VPS call: the session fields of ``cred`` plus ``extra``.

    The single place a per-VPS form is built. Raises ``RejectedError`` (nothing sent) if the
    form would carry a kvm_id, signature or valid_until other than ``cred``'s own.
    """
    clash = _SESSION_FIELDS.intersection(extra)
    form = {**extra, **cred.form()}
    if clash or form["kvm_id"] != cred.kvm_id or not cred.kvm_id:
        raise RejectedError(
            "refusing to send: the request would carry another VPS's session fields",
            endpoint="form",
            kvm_id=cred.kvm_id,
        )
    return form


def _scrubbed(result: Classification, secrets: Sequence[str], sent: str) -> Classification:
    """Return ``result`` with its message scrubbed of the call's secrets and of quotes of the
    user data ``sent`` (``text.scrub``)."""
    if result.outcome is Outcome.ACCEPTED:
        return result
    message = scrub(result.message, secrets, sent)
    return result if message == result.message else dataclasses.replace(result, message=message)
