"""The session book: per-VPS credentials from one auth call, kept fresh for every worker.

One auth call returns a signature and a ``valid_until`` for every VPS of the account
(API-NOTES, "Sessions"). The book hands out those credentials and

- refreshes the whole account *before* a needed credential's ``valid_until`` minus a margin
  (60 s by default; half the observed lifetime when lifetimes are shorter than twice the
  margin, so a short-lived session never turns into a refresh loop);
- keeps exactly one auth request in flight however many workers need it (single flight);
  the workers that waited on a failed flight all receive that flight's error;
- judges expiry on the server's clock: the skew is estimated from the auth answer's ``Date``
  header;
- on a refused signature refreshes once (unless another worker already did since that
  credential was issued) and replays the call once;
- names the VPS in a ``SessionUnavailableError`` when the account has no usable entry for it
  (missing, api_host not allowed, malformed, an inner kvm_id naming another VPS) or when its
  session is already expired on arrival — never a refresh loop; and never hands out a
  credential whose kvm_id is not the one asked for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import anyio

from orchestrator.edis.client import AuthResult, VpsCredentials
from orchestrator.errors import SessionExpiredError, SessionUnavailableError
from orchestrator.model import Clock

T = TypeVar("T")

SESSION = "session"


class Authenticator(Protocol):
    """What the book needs from the client: one auth call."""

    async def authenticate(self, kvm_id: str | None = None) -> AuthResult: ...


@dataclass(frozen=True)
class _Entry:
    cred: VpsCredentials
    refresh_at: float  # server time after which the book refreshes before handing it out


@dataclass
class _Flight:
    done: anyio.Event = field(default_factory=anyio.Event)
    error: Exception | None = None


class SessionBook:
    """Per-VPS credentials with single-flight refresh ahead of expiry.

    ``scope`` limits the session to one kvm_id (the API's optional ``kvm_id`` on auth).
    ``on_refresh`` is called after every successful auth call (for progress and counters).
    """

    def __init__(
        self,
        auth: Authenticator,
        *,
        clock: Clock,
        margin: float = 60.0,
        scope: str | None = None,
        on_refresh: Callable[[AuthResult], None] | None = None,
    ) -> None:
        self._auth = auth
        self._clock = clock
        self._margin = margin
        self._scope = scope
        self._on_refresh = on_refresh
        self._entries: dict[str, _Entry] = {}
        self._unusable: dict[str, str] = {}
        self._generation = 0
        self._flight: _Flight | None = None
        self.skew = 0.0
        """Server clock minus ours, in seconds, from the last auth answer's ``Date``."""
        self.refreshes = 0
        """How many auth calls succeeded."""

    def server_now(self) -> float:
        """Return our best estimate of the server's current Unix time."""
        return self._clock.time() + self.skew

    @property
    def generation(self) -> int:
        """How many sessions the book has loaded; changes on every refresh."""
        return self._generation

    @property
    def refreshing(self) -> bool:
        """True while an auth call is out (a live view says so)."""
        return self._flight is not None

    async def accounts(self) -> Mapping[str, VpsCredentials]:
        """Return every usable credential of the account, creating a session if none yet.

        Raises the client's ``ApiError`` subclasses (``AuthenticationError`` included).
        """
        if self._generation == 0:
            await self._refresh(0)
        return {kvm_id: e.cred for kvm_id, e in self._entries.items()}

    @property
    def unusable(self) -> Mapping[str, str]:
        """The kvm ids of the last session that could not be used, with the reason."""
        return dict(self._unusable)

    async def get(self, kvm_id: str) -> VpsCredentials:
        """Return fresh credentials for ``kvm_id``, refreshing the session first if needed.

        Raises ``SessionUnavailableError`` naming the VPS when the account has no usable
        entry for it or its session arrived already expired, and the client's ``ApiError``
        subclasses when the auth call itself fails.
        """
        seen = self._generation
        entry = self._entries.get(kvm_id)
        if entry is not None and self.server_now() < entry.refresh_at:
            return self._selected(kvm_id, entry.cred)
        if entry is None and seen > 0:
            # The current session has nothing usable for it (missing from the account,
            # host not allowed, expired on arrival): another auth call would not help.
            raise self._unavailable(kvm_id)
        await self._refresh(seen)
        entry = self._entries.get(kvm_id)
        if entry is None:
            raise self._unavailable(kvm_id)
        return self._selected(kvm_id, entry.cred)

    def _selected(self, kvm_id: str, cred: VpsCredentials) -> VpsCredentials:
        # The client keys credentials by the id they were selected by; a credential for
        # another VPS must never be handed out, whoever built it.
        if cred.kvm_id != kvm_id:
            raise SessionUnavailableError(
                f"no usable session for {kvm_id}: its credentials name another VPS",
                endpoint=SESSION,
                kvm_id=kvm_id,
            )
        return cred

    async def call(self, kvm_id: str, fn: Callable[[VpsCredentials], Awaitable[T]]) -> T:
        """Run ``fn`` with fresh credentials; on a refused signature refresh once, replay once.

        A second refusal propagates as ``SessionExpiredError``. Other errors propagate as is.
        """
        cred = await self.get(kvm_id)
        issued_in = self._generation
        try:
            return await fn(cred)
        except SessionExpiredError:
            # One refresh for a whole storm: workers whose credential is older than the
            # current session skip straight to the replay.
            await self._refresh(issued_in)
            cred = await self.get(kvm_id)
            return await fn(cred)

    # -- single flight ---------------------------------------------------------------

    async def _refresh(self, seen: int) -> None:
        """Make sure a session newer than generation ``seen`` is loaded, with one auth call."""
        while self._generation == seen:
            flight = self._flight
            if flight is None:
                await self._lead(seen)
                return
            await flight.done.wait()
            if flight.error is not None and self._generation == seen:
                raise flight.error
            # The leader was cancelled without an answer: loop and lead a new flight.

    async def _lead(self, seen: int) -> None:
        flight = self._flight = _Flight()
        try:
            result = await self._auth.authenticate(self._scope)
            self._load(result)
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            self._flight = None
            flight.done.set()

    def _load(self, result: AuthResult) -> None:
        if result.server_time is not None:
            self.skew = result.server_time - result.local_time
        now = self.server_now()
        entries: dict[str, _Entry] = {}
        unusable = dict(result.unusable)
        for kvm_id, cred in result.credentials.items():
            lifetime = cred.valid_until - now
            if lifetime <= 0:
                unusable[kvm_id] = (
                    f"its session arrived already expired (valid_until {cred.valid_until}, "
                    f"server time about {int(now)})"
                )
                continue
            entries[kvm_id] = _Entry(cred, cred.valid_until - min(self._margin, lifetime / 2))
        self._entries = entries
        self._unusable = unusable
        self._generation += 1
        self.refreshes += 1
        if self._on_refresh is not None:
            self._on_refresh(result)

    def _unavailable(self, kvm_id: str) -> SessionUnavailableError:
        reason = self._unusable.get(kvm_id, "it is not in the account")
        return SessionUnavailableError(
            f"no usable session for {kvm_id}: {reason}", endpoint=SESSION, kvm_id=kvm_id
        )
