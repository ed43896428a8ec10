"""Reading an account without a manifest: its VPSes (``edis-fleet vps``), the images each can
install (``edis-fleet images``), and what ``edis-fleet init`` builds a manifest from.

Read-only calls only (auth, ``get/details``, ``get/power``, ``get/images``), each after a token
from one rate limiter and retried like pre-flight's reads (``ReadRetries``: a passing 502 is
retried, a refused password is final at once). A VPS whose details or images cannot be read
is still listed, with the reason; server text arrives cleaned by the client.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from orchestrator.clock import SystemClock
from orchestrator.edis.client import EdisClient, VpsCredentials
from orchestrator.edis.session import SessionBook
from orchestrator.errors import ApiError, UsageError
from orchestrator.fleet import DEFAULT_SESSION_URL
from orchestrator.model import Clock
from orchestrator.run.api import LimitedAuth, ReadRetries
from orchestrator.run.limits import RateLimiter
from orchestrator.run.options import AccountOptions
from orchestrator.secrets import Secret
from orchestrator.suggest import did_you_mean

T = TypeVar("T")
DEFAULT_ACCOUNT = AccountOptions()
Progress = Callable[[str, int, int], None]
"""Called as ``progress(what, done, total)`` after each VPS's read of one kind (``details``,
``power``, ``images``): a long listing at a few requests per second is not silent."""


@dataclass(frozen=True)
class AccountVps:
    """One VPS of the account as ``vps`` lists it.

    ``hostname`` and the addresses come from ``get/details`` (empty when it could not be read),
    ``power`` from ``get/power`` (``None`` when not asked or not readable). ``problem`` says what
    could not be read; an entry that is not ``usable`` (its session entry was refused, e.g. an
    api host outside the allowlist) has only its id and that reason.
    """

    kvm_id: str
    description: str = ""
    hostname: str = ""
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    suspended: bool = False
    power: str | None = None
    usable: bool = True
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the entry as JSON-ready data (the ``--format json`` of ``vps``)."""
        return {
            "kvm_id": self.kvm_id,
            "hostname": self.hostname or None,
            "description": self.description or None,
            "ipv4": list(self.ipv4),
            "ipv6": list(self.ipv6),
            "suspended": self.suspended,
            "power": self.power,
            "usable": self.usable,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class ImageList:
    """The images one VPS can install, in the API's order, or why they could not be read
    (``known`` is false for an id the account does not list)."""

    kvm_id: str
    images: tuple[str, ...] = ()
    problem: str | None = None
    known: bool = True

    def to_json(self) -> dict[str, Any]:
        """Return the entry as JSON-ready data (the ``--format json`` of ``images``)."""
        return {"kvm_id": self.kvm_id, "images": list(self.images), "problem": self.problem}


@dataclass(frozen=True)
class ImageGroup:
    """VPSes offered exactly the same image list."""

    images: tuple[str, ...]
    kvm_ids: tuple[str, ...] = field(default_factory=tuple)


def group_images(lists: Sequence[ImageList]) -> list[ImageGroup]:
    """Group the readable lists by identical content (largest group first, then by first id);
    lists with a problem are left out."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for entry in lists:
        if entry.problem is None:
            groups.setdefault(entry.images, []).append(entry.kvm_id)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))
    return [ImageGroup(images, tuple(ids)) for images, ids in ordered]


def login(options: AccountOptions, env: Mapping[str, str]) -> tuple[str, Secret]:
    """Return the e-mail and password from the variables ``options`` names. Raises
    ``UsageError`` naming the variables that are not set (never their values)."""
    missing = [name for name in (options.email_env, options.password_env) if not env.get(name)]
    if missing:
        raise UsageError(
            f"set {' and '.join(missing)} in the environment (the account's e-mail and "
            "password; --email-env and --password-env name other variables)"
        )
    return env[options.email_env], Secret(env[options.password_env])


class AccountReader:
    """Read-only calls against one account session, rate-limited and retried."""

    def __init__(
        self,
        client: EdisClient,
        book: SessionBook,
        reads: ReadRetries,
        limiter: RateLimiter,
        concurrency: int,
        *,
        progress: Progress | None = None,
    ) -> None:
        self._client = client
        self._progress = progress
        self._book = book
        self._reads = reads
        self._limiter = limiter
        self._slots = anyio.CapacityLimiter(max(1, concurrency))

    @property
    def client(self) -> EdisClient:
        """The client the calls go through."""
        return self._client

    async def entries(self) -> tuple[Mapping[str, VpsCredentials], Mapping[str, str]]:
        """Return the usable session entries and the unusable ids with their reasons. Raises
        ``ApiError`` (``AuthenticationError`` when the login is refused)."""
        usable = await self._book.accounts()
        return usable, self._book.unusable

    async def read(self, kvm_id: str, fn: Callable[[VpsCredentials], Awaitable[T]]) -> T:
        """Call ``fn`` with the VPS's fresh credentials after a rate token, with retries.
        Raises the last ``ApiError``."""

        async def attempt() -> T:
            await self._limiter.acquire("call")
            return await self._book.call(kvm_id, fn)

        async with self._slots:
            return await self._reads(attempt)

    async def each(
        self, what: str, kvm_ids: Sequence[str], fn: Callable[[VpsCredentials], Awaitable[T]]
    ) -> dict[str, T | ApiError]:
        """Call ``fn`` for every VPS (``concurrency`` at a time); return each result or the
        ``ApiError`` it ended with. Progress is reported as ``what``."""
        results: dict[str, T | ApiError] = {}
        total = len(set(kvm_ids))

        async def one(kvm_id: str) -> None:
            try:
                results[kvm_id] = await self.read(kvm_id, fn)
            except ApiError as exc:
                results[kvm_id] = exc
            if self._progress is not None:
                self._progress(what, len(results), total)

        async with anyio.create_task_group() as tg:
            for kvm_id in dict.fromkeys(kvm_ids):
                tg.start_soon(one, kvm_id)
        return results

    async def images(self, kvm_ids: Sequence[str]) -> list[ImageList]:
        """Return the image list of each VPS, in the order given."""
        found = await self.each("images", kvm_ids, self._client.images)
        out: list[ImageList] = []
        for kvm_id in kvm_ids:
            got = found[kvm_id]
            if isinstance(got, ApiError):
                out.append(ImageList(kvm_id, problem=f"could not list its images: {got.message}"))
            else:
                out.append(ImageList(kvm_id, tuple(got)))
        return out


@contextlib.asynccontextmanager
async def connected(
    options: AccountOptions,
    env: Mapping[str, str],
    *,
    clock: Clock | None = None,
    progress: Progress | None = None,
) -> AsyncIterator[AccountReader]:
    """Yield an ``AccountReader`` on a client for the account ``options`` names. Raises
    ``UsageError`` (login variables not set), ``HostNotAllowedError`` (a session URL that is
    not allowed) or ``ManifestError`` (an unreadable ``ca_file``)."""
    email, password = login(options, env)
    clock = clock or SystemClock()
    async with EdisClient(
        session_url=options.session_url or DEFAULT_SESSION_URL,
        email=email,
        password=password,
        allowed_hosts=options.extra_api_hosts,
        ca_file=options.ca_file,
        clock=clock,
    ) as client:
        limiter = RateLimiter(options.rate, clock=clock)
        reads = ReadRetries(clock=clock, limiter=limiter)
        book = SessionBook(LimitedAuth(client, limiter, reads), clock=clock)
        yield AccountReader(client, book, reads, limiter, options.concurrency, progress=progress)


def _addresses(details: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return the IPv4 addresses (``ip.ipv4``) and IPv6 networks (``ip.ipv6_64``) of a
    ``get/details`` answer. Never raises for odd shapes."""
    ip = details.get("ip")
    if not isinstance(ip, Mapping):
        return (), ()
    v4 = ip.get("ipv4")
    v4_list = [v4] if isinstance(v4, str) else v4 if isinstance(v4, list) else []
    v6 = ip.get("ipv6_64")
    v6_list = [v6] if isinstance(v6, str) else v6 if isinstance(v6, list) else []
    return (
        tuple(a for a in v4_list if isinstance(a, str) and a),
        tuple(a for a in v6_list if isinstance(a, str) and a),
    )


async def read_vps(reader: AccountReader, *, power: bool) -> list[AccountVps]:
    """Return every VPS of the account (usable ones with details, and power if asked, then the
    unusable ones with their reason), sorted by id."""
    usable, unusable = await reader.entries()
    ids = sorted(usable)
    details = await reader.each("details", ids, reader.client.details)
    states: dict[str, str | ApiError] = {}
    if power:
        states = await reader.each("power", ids, reader.client.power)
    out: list[AccountVps] = []
    for kvm_id in ids:
        cred = usable[kvm_id]
        problems: list[str] = []
        got = details[kvm_id]
        hostname = ""
        v4: tuple[str, ...] = ()
        v6: tuple[str, ...] = ()
        if isinstance(got, ApiError):
            problems.append(f"details: {got.message}")
        else:
            name = got.get("hostname")
            hostname = name if isinstance(name, str) else ""
            v4, v6 = _addresses(got)
        state = states.get(kvm_id)
        if isinstance(state, ApiError):
            problems.append(f"power: {state.message}")
            state = None
        out.append(
            AccountVps(
                kvm_id,
                description=cred.description,
                hostname=hostname,
                ipv4=v4,
                ipv6=v6,
                suspended=cred.suspended,
                power=state,
                problem="; ".join(problems) or None,
            )
        )
    out += [
        AccountVps(kvm_id, usable=False, problem=why) for kvm_id, why in sorted(unusable.items())
    ]
    return sorted(out, key=lambda v: v.kvm_id)


async def account_vps(
    account: AccountOptions = DEFAULT_ACCOUNT,
    *,
    power: bool = True,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> list[AccountVps]:
    """List the account's VPSes: id, hostname, addresses, suspended, power (``edis-fleet vps``).

    ``env`` holds the login variables ``account`` names (default: ``os.environ``); ``progress``
    hears of every VPS read. Raises
    ``UsageError`` (login variables not set), ``AuthenticationError`` (the login was refused),
    ``ApiError`` (the account could not be read) or ``HostNotAllowedError``.
    """
    async with connected(account, _environ(env), progress=progress) as reader:
        return await read_vps(reader, power=power)


async def account_images(
    account: AccountOptions = DEFAULT_ACCOUNT,
    kvm_ids: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> list[ImageList]:
    """Return the images each VPS can install (``edis-fleet images``): the given ones, or every
    usable one of the account when ``kvm_ids`` is ``None``. An id not in the account, or a VPS
    whose list cannot be read, has a ``problem``. Raises as ``account_vps``."""
    async with connected(account, _environ(env), progress=progress) as reader:
        usable, unusable = await reader.entries()
        wanted = sorted(usable) if kvm_ids is None else list(dict.fromkeys(kvm_ids))
        known = [k for k in wanted if k in usable]
        found = {entry.kvm_id: entry for entry in await reader.images(known)}
    out: list[ImageList] = []
    for kvm_id in wanted:
        if kvm_id in found:
            out.append(found[kvm_id])
        elif kvm_id in unusable:
            out.append(ImageList(kvm_id, problem=f"cannot be used: {unusable[kvm_id]}"))
        else:
            hint = did_you_mean(kvm_id, usable)
            out.append(ImageList(kvm_id, problem=f"not in the account{hint}", known=False))
    return out


def _environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env
