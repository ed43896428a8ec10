"""The simulator's clock: the machine's wall clock plus an offset that tests can move."""

from __future__ import annotations

import time
from email.utils import formatdate


class SimClock:
    """Unix time as the simulator sees it: ``time.time() + offset``.

    The offset starts at ``SimConfig.clock_offset`` (to show a client a skewed server) and
    ``advance`` moves it forward, which ages signatures and installs at once without sleeping.
    """

    __slots__ = ("_date_cache", "_offset")

    def __init__(self, offset: float = 0.0) -> None:
        self._offset = offset
        self._date_cache: tuple[int, str] = (-1, "")

    def now(self) -> float:
        """Return the simulator's current Unix time in seconds."""
        return time.time() + self._offset

    @property
    def offset(self) -> float:
        """Seconds between the simulator's clock and the machine's."""
        return self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``; raises ``ValueError`` if negative."""
        if seconds < 0:
            raise ValueError("the simulator clock only moves forward")
        self._offset += seconds

    def http_date(self) -> str:
        """Return the current time as an RFC 7231 ``Date`` header value."""
        second = int(self.now())
        # Formatting costs more than the rest of a small response; once a second is enough.
        if self._date_cache[0] != second:
            self._date_cache = (second, formatdate(second, usegmt=True))
        return self._date_cache[1]
