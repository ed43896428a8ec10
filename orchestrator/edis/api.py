"""``EdisFleetAPI``: the scheduler's ``ReinstallAPI`` on top of the client and the session book.

Each call gets fresh credentials from the session book (which refreshes ahead of expiry and
replays once after a refused signature). The book's own auth calls go through the run's rate
limiter too (``LimitedAuth``), so every API call of a run shares one request rate.
"""

from __future__ import annotations

from orchestrator.edis.client import AuthResult, EdisClient, VpsCredentials
from orchestrator.edis.session import SessionBook
from orchestrator.limits import RateLimiter
from orchestrator.readiness import primary_ipv4
from orchestrator.secrets import Secret


class LimitedAuth:
    """An ``Authenticator`` that takes a rate token before each auth call."""

    def __init__(self, client: EdisClient, limiter: RateLimiter) -> None:
        self._client = client
        self._limiter = limiter

    async def authenticate(self, kvm_id: str | None = None) -> AuthResult:
        """Authenticate through the client once a rate token is granted. Raises ``ApiError``."""
        await self._limiter.acquire("call")
        return await self._client.authenticate(kvm_id)


class EdisFleetAPI:
    """Per-VPS reinstall, power and address lookups; raises ``ApiError`` subclasses.

    The caller takes rate tokens for reinstalls and polls (it knows which share to use);
    this class only adds credentials.
    """

    def __init__(self, client: EdisClient, book: SessionBook) -> None:
        self._client = client
        self._book = book

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
        details = await self._book.call(kvm_id, self._client.details)
        return primary_ipv4(details)
