"""``EdisFleetAPI``: the scheduler's ``ReinstallAPI`` on top of the client and the session book.

Each call gets fresh credentials from the session book (which refreshes ahead of expiry and
replays once after a refused signature). The book's own auth calls go through the run's rate
limiter too (``LimitedAuth``), so every API call of a run shares one request rate, and they are
retried like every read-only call (``ReadRetries``): a passing 502 on the auth call must not
end a run, while a refused password is final at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from orchestrator.clock import SystemClock
from orchestrator.edis.client import AuthResult, EdisClient, VpsCredentials
from orchestrator.edis.session import SessionBook
from orchestrator.errors import ApiError
from orchestrator.model import Clock
from orchestrator.run.limits import RateLimiter
from orchestrator.run.readiness import primary_ipv4
from orchestrator.run.retry import RetryBudget, RetryPolicy, call_with_retries
from orchestrator.secrets import Secret

T = TypeVar("T")


class ReadRetries:
    """Retries for calls that change nothing (auth, images, details), per ``retry.decide``.

    When a limiter is given, every attempt's result is reported to it (``RateLimiter.report``),
    so overload signals slow the fleet and sporadic errors do not.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._policy = policy or RetryPolicy()
        self._budget = budget or RetryBudget()
        self._limiter = limiter

    async def __call__(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` with retries; raises the last ``ApiError`` when they run out."""
        limiter = self._limiter

        async def reported() -> T:
            try:
                result = await fn()
            except ApiError as exc:
                if limiter is not None:
                    limiter.report(exc)
                raise
            if limiter is not None:
                limiter.report(None)
            return result

        return await call_with_retries(
            reported,
            destructive=False,
            policy=self._policy,
            budget=self._budget,
            clock=self._clock,
        )


class LimitedAuth:
    """An ``Authenticator`` that takes a rate token before each auth attempt, with retries."""

    def __init__(
        self, client: EdisClient, limiter: RateLimiter, retries: ReadRetries | None = None
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._retries = retries or ReadRetries(limiter=limiter)

    async def authenticate(self, kvm_id: str | None = None) -> AuthResult:
        """Authenticate through the client once a rate token is granted. Raises ``ApiError``
        (``AuthenticationError`` at once, never retried)."""

        async def attempt() -> AuthResult:
            await self._limiter.acquire("call")
            return await self._client.authenticate(kvm_id)

        return await self._retries(attempt)


class EdisFleetAPI:
    """Per-VPS reinstall, power and address lookups; raises ``ApiError`` subclasses.

    The caller takes rate tokens for reinstalls and polls (it knows which share to use);
    this class only adds credentials.
    """

    def __init__(
        self, client: EdisClient, book: SessionBook, retries: ReadRetries | None = None
    ) -> None:
        self._client = client
        self._book = book
        self._retries = retries or ReadRetries()

    async def reinstall(
        self, kvm_id: str, *, image: str, password: Secret, user_data: Secret | None
    ) -> None:
        """Reinstall ``kvm_id``; returns when accepted. WIPES THE DISK."""

        async def send(cred: VpsCredentials) -> None:
            await self._client.reinstall(
                cred, image=image, password=password, cloudinit_user_data=user_data
            )

        await self._book.call(kvm_id, send)

    async def power(self, kvm_id: str) -> str:
        """Return the power state text of ``kvm_id``."""
        return await self._book.call(kvm_id, self._client.power)

    async def address(self, kvm_id: str) -> str | None:
        """Return the primary IPv4 address of ``kvm_id`` (from ``get/details``), or None."""
        details = await self._retries(lambda: self._book.call(kvm_id, self._client.details))
        return primary_ipv4(details)
