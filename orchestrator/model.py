"""Types every layer shares: enums, frozen dataclasses and the seams as ``Protocol``s.

Nothing here does I/O. Later layers add targets, plans and events; the foundation needs the
outcome classes (DESIGN.md, "Outcome classes") and the clock seam.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    # Only a type: secrets.py imports nothing from orchestrator, so there is no cycle.
    from orchestrator.secrets.values import Secret


class Outcome(enum.Enum):
    """What one API attempt amounts to; the retry policy decides from this alone.

    - ``NOT_SENT``: never reached the server; safe to resend.
    - ``THROTTLED``: 429/503; the whole fleet cools down, then resends.
    - ``SESSION``: the signature was refused; refresh once, replay once.
    - ``REJECTED``: final for that VPS (400, 403, unknown image, suspended...).
    - ``ACCEPTED``: HTTP 200 and ``status == "success"``.
    - ``IN_DOUBT``: the server may have acted; never resent blindly.
    """

    NOT_SENT = "not_sent"
    THROTTLED = "throttled"
    SESSION = "session"
    REJECTED = "rejected"
    ACCEPTED = "accepted"
    IN_DOUBT = "in_doubt"


class Clock(Protocol):
    """Time as an input, so tests never wait for real minutes.

    ``time()`` is wall-clock Unix seconds (compared with the API's ``valid_until``);
    ``monotonic()`` measures durations; ``sleep()`` waits.
    """

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class Attempt:
    """One API call as seen by the client: what it was, what came of it, how long it took.

    Carries no secrets: the message is the server's text, already redacted.
    """

    endpoint: str
    kvm_id: str | None
    outcome: Outcome
    status: int | None
    message: str
    seconds: float


class TargetState(enum.Enum):
    """Where one VPS of a run stands.

    ``pending`` → ``intent`` (a reinstall is about to be sent; durable before it leaves) →
    ``accepted`` → ``ready``; or a final ``failed``, ``in_doubt`` (the server may have acted,
    we do not know) or ``skipped`` (never sent: budget tripped, run drained).
    """

    PENDING = "pending"
    INTENT = "intent"
    ACCEPTED = "accepted"
    READY = "ready"
    FAILED = "failed"
    IN_DOUBT = "in_doubt"
    SKIPPED = "skipped"

    @property
    def final(self) -> bool:
        """True for the states a VPS ends a run in."""
        return self in _FINAL_STATES


_FINAL_STATES = frozenset(
    {TargetState.READY, TargetState.FAILED, TargetState.IN_DOUBT, TargetState.SKIPPED}
)

#: The states in the order a VPS goes through them, the final ones last: the column order of
#: per-state counts (live view, summary lines) and the order of one VPS's events in reports
#: when two phases share a timestamp.
STATE_ORDER: tuple[TargetState, ...] = (
    TargetState.PENDING,
    TargetState.INTENT,
    TargetState.ACCEPTED,
    TargetState.READY,
    TargetState.FAILED,
    TargetState.IN_DOUBT,
    TargetState.SKIPPED,
)


@dataclass(frozen=True)
class TargetEvent:
    """One state change of one VPS, as the scheduler reports it to its sinks.

    ``at`` is wall-clock Unix time; ``reason`` says why (the server's message for a failure,
    the readiness probe's finding for ``ready``). Carries no secrets.
    """

    kvm_id: str
    state: TargetState
    wave: int
    at: float
    reason: str = ""
    # ``in_doubt`` only: the in-doubt policy decided to resend this VPS once its install
    # window has passed (the journal records the decision, so resume serves that window).
    resend: bool = False
    # Readiness mode ssh (public keys only): the host key scanned just before the send, on the
    # ``pending`` event that precedes its intent (``""``: nothing answered; None: no scan);
    # on a final event, the proof the reinstall got (``pinned``, ``key-changed``, ``weaker``)
    # and its proven host key as a known_hosts line. The journal records them as facts.
    presend_key: str | None = None
    proof: str = ""
    known_hosts: str = ""


class ReinstallAPI(Protocol):
    """What the scheduler needs from the provider, per VPS (sessions handled behind it).

    Each method raises ``orchestrator.errors.ApiError`` subclasses, classified by outcome.
    """

    async def reinstall(
        self, kvm_id: str, *, image: str, password: Secret, user_data: Secret | None
    ) -> None: ...

    async def power(self, kvm_id: str) -> str: ...

    async def address(self, kvm_id: str) -> str | None: ...


class EventSink(Protocol):
    """Where the scheduler's events go (journal, progress, reports).

    ``before_send`` returns only once the intent for ``kvm_id`` is durable; ``emit`` records a
    state change and must not block.
    """

    async def before_send(self, kvm_id: str, wave: int) -> None: ...

    def emit(self, event: TargetEvent) -> None: ...
