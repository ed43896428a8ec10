"""Types every layer shares: enums, frozen dataclasses and the seams as ``Protocol``s.

Nothing here does I/O. Later layers add targets, plans and events; the foundation needs the
outcome classes (DESIGN.md, "Outcome classes") and the clock seam.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


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
