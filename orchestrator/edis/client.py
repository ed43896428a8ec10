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
password, to wherever ``Location`` points). Each attempt is classified by
``orchestrator.edis.outcome.classify`` and a failure is raised as the matching ``ApiError``
subclass. The client does not retry: that is the retry policy's job.
"""

from __future__ import annotations

import email.utils
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from orchestrator.clock import SystemClock
from orchestrator.edis.hosts import HostPolicy
from orchestrator.edis.outcome import (
    Classification,
    HttpAnswer,
    TransportFailure,
    TransportKind,
    classify,
)
from orchestrator.errors import (
    ApiError,
    AuthenticationError,
    HostNotAllowedError,
    InDoubtError,
    NotSentError,
    RejectedError,
    SessionExpiredError,
    ThrottledError,
)
from orchestrator.model import Attempt, Clock, Outcome
from orchestrator.secrets import Secret
from orchestrator.version import __version__

AUTH = "get/auth"
IMAGES = "get/images"
REINSTALL = "set/reinstall"
POWER = "get/power"
DETAILS = "get/details"

_ERROR_FOR: dict[Outcome, type[ApiError]] = {
    Outcome.NOT_SENT: NotSentError,
    Outcome.THROTTLED: ThrottledError,
    Outcome.SESSION: SessionExpiredError,
    Outcome.REJECTED: RejectedError,
    Outcome.IN_DOUBT: InDoubtError,
}


@dataclass(frozen=True)
class VpsCredentials:
    """What one VPS's entry of the auth answer gives: where to call and with what signature.

    ``base_url`` is ``scheme://api_host``, already checked against the host allowlist.
    """

    kvm_id: str
    api_host: str
    base_url: str
    signature: Secret
    valid_until: int
    suspended: bool
    description: str = ""

    def form(self) -> dict[str, str]:
        """Return the session fields every per-VPS call sends."""
        return {
            "signature": self.signature.reveal(),
            "kvm_id": self.kvm_id,
            "valid_until": str(self.valid_until),
        }


@dataclass(frozen=True)
class AuthResult:
    """The answer of one auth call.

    ``credentials`` holds the usable entries; ``unusable`` maps the kvm ids whose entry could
    not be used (api_host not allowed, malformed entry) to the reason. ``server_time`` is the
    answer's ``Date`` header as Unix seconds (None when absent), ``local_time`` our clock when
    the answer arrived: together they give the clock skew.
    """

    credentials: Mapping[str, VpsCredentials]
    unusable: Mapping[str, str]
    server_time: float | None
    local_time: float


class EdisClient:
    """Async client for the EDIS Management API. Use as ``async with EdisClient(...) as c:``.

    ``allowed_hosts`` widens the api_host allowlist beyond ``*.edisglobal.com`` (host globs
    or CIDR networks). ``ca_file`` adds a private CA; ``ssl_context`` replaces the TLS set-up
    entirely. ``on_attempt`` is called after every attempt with a secret-free ``Attempt``.
    Raises ``HostNotAllowedError`` at construction for a session URL that is not allowed.
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
        clock: Clock | None = None,
        on_attempt: Callable[[Attempt], None] | None = None,
    ) -> None:
        self._policy, self._session_base = HostPolicy.for_session_url(session_url, allowed_hosts)
        self._email = email
        self._password = password
        self._clock: Clock = clock or SystemClock()
        self._on_attempt = on_attempt
        if ssl_context is None:
            ssl_context = ssl.create_default_context(cafile=ca_file)
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
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
            headers={"User-Agent": f"edis-fleet/{__version__}"},
            auto_decompress=True,
        )

    # -- calls -------------------------------------------------------------------------

    async def authenticate(self, kvm_id: str | None = None) -> AuthResult:
        """Create a session for the whole account, or for one ``kvm_id``.

        Raises ``AuthenticationError`` when the email/password (or the kvm_id scope) is
        refused — never worth a retry — and the other ``ApiError`` subclasses for transport
        failures and throttling.
        """
        form = {"email": self._email, "pw": self._password.reveal()}
        if kvm_id is not None:
            form["kvm_id"] = kvm_id
        answer, result = await self._post(
            AUTH, self._session_base, form, kvm_id=kvm_id, destructive=False, secrets=(form["pw"],)
        )
        if result.outcome in (Outcome.SESSION, Outcome.REJECTED):
            raise AuthenticationError(
                f"the account credentials were refused: {result.message}",
                endpoint=AUTH,
                kvm_id=kvm_id,
                status=result.status,
            )
        self._raise_unless_accepted(result, AUTH, kvm_id)
        assert answer is not None  # accepted implies an HTTP answer
        return self._parse_auth(result.data, answer, kvm_id)

    async def images(self, cred: VpsCredentials) -> list[str]:
        """Return the image names this VPS may be reinstalled with. Raises ``ApiError``."""
        data = await self._vps_call(IMAGES, cred, {})
        if not isinstance(data, list) or not all(isinstance(i, str) for i in data):
            raise InDoubtError(
                "image list is not a list of names", endpoint=IMAGES, kvm_id=cred.kvm_id
            )
        return list(data)

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
        return data

    async def details(self, cred: VpsCredentials) -> dict[str, Any]:
        """Return the VPS's basic details (hostname, ip, hw, suspended). Raises ``ApiError``."""
        data = await self._vps_call(DETAILS, cred, {})
        if not isinstance(data, dict):
            raise InDoubtError("details are not an object", endpoint=DETAILS, kvm_id=cred.kvm_id)
        return data

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
        form = cred.form()
        form.update(extra)
        secrets = (
            form["signature"],
            extra.get("password", ""),
            extra.get("cloudinit_user_data", ""),
        )
        _, result = await self._post(
            endpoint, base, form, kvm_id=cred.kvm_id, destructive=destructive, secrets=secrets
        )
        self._raise_unless_accepted(result, endpoint, cred.kvm_id)
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
    ) -> tuple[HttpAnswer | None, Classification]:
        session = self._writes if destructive else self._reads
        if session is None:
            raise RuntimeError("EdisClient used outside 'async with'")
        url = f"{base}/kvm/v2/{endpoint}"
        started = self._clock.monotonic()
        attempt: HttpAnswer | TransportFailure
        answer: HttpAnswer | None = None
        try:
            async with session.post(url, data=form, allow_redirects=False) as resp:
                body = await resp.read()
                answer = HttpAnswer(resp.status, body, resp.headers)
                attempt = answer
        except aiohttp.ClientError as exc:
            attempt = TransportFailure(_transport_kind(exc), _describe(exc))
        except TimeoutError as exc:
            attempt = TransportFailure("read_timeout", _describe(exc))
        result = classify(attempt, now=self._clock.time())
        message = _redact(result.message, secrets)
        if message is not result.message:
            result = Classification(
                result.outcome, message, result.status, result.retry_after, result.data
            )
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

    @staticmethod
    def _raise_unless_accepted(result: Classification, endpoint: str, kvm_id: str | None) -> None:
        if result.outcome is Outcome.ACCEPTED:
            return
        raise _ERROR_FOR[result.outcome](
            result.message,
            endpoint=endpoint,
            kvm_id=kvm_id,
            status=result.status,
            retry_after=result.retry_after,
        )

    def _parse_auth(self, data: object, answer: HttpAnswer, scope: str | None) -> AuthResult:
        local_time = self._clock.time()
        if not isinstance(data, dict):
            raise InDoubtError("auth answer has no account data", endpoint=AUTH, kvm_id=scope)
        credentials: dict[str, VpsCredentials] = {}
        unusable: dict[str, str] = {}
        for key, entry in data.items():
            kvm_id = str(key)
            try:
                cred = self._parse_entry(kvm_id, entry)
            except (ValueError, HostNotAllowedError) as exc:
                # One bad entry must not hide the others; asking for it later says why.
                unusable[kvm_id] = str(exc)
                continue
            credentials[kvm_id] = cred
        return AuthResult(
            credentials=credentials,
            unusable=unusable,
            server_time=_http_date(answer.headers.get("Date")),
            local_time=local_time,
        )

    def _parse_entry(self, kvm_id: str, entry: object) -> VpsCredentials:
        if not isinstance(entry, dict):
            raise ValueError("entry is not an object")
        api_host = entry.get("api_host")
        signature = entry.get("signature")
        valid_until = entry.get("valid_until")
        if not isinstance(api_host, str) or not api_host:
            raise ValueError("entry has no api_host")
        if not isinstance(signature, str) or not signature:
            raise ValueError("entry has no signature")
        if isinstance(valid_until, bool) or not isinstance(valid_until, int | str):
            raise ValueError("entry has no valid_until")
        base = self._policy.api_base(api_host)  # raises HostNotAllowedError
        self._allowed_bases[api_host] = base
        description = entry.get("description")
        return VpsCredentials(
            kvm_id=str(entry.get("kvm_id") or kvm_id),
            api_host=api_host,
            base_url=base,
            signature=Secret(signature),
            valid_until=int(valid_until),
            suspended=entry.get("suspended", "n") != "n",
            description=description if isinstance(description, str) else "",
        )


def _transport_kind(exc: aiohttp.ClientError) -> TransportKind:
    """Map an aiohttp exception to how far the request got. Order matters: subclasses first."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
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


def _describe(exc: BaseException) -> str:
    # The exception text names the URL (host and path, no secrets: they travel in the body).
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _redact(message: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if len(secret) >= 4 and secret in message:
            message = message.replace(secret, "***")
    return message


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
