"""Clocks: the real one, and a fake one shipped with the product for tests and drills."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel


class SystemClock:
    """The machine's clock; ``sleep`` is ``anyio.sleep``."""

    def time(self) -> float:
        """Return wall-clock Unix seconds."""
        return time.time()

    def monotonic(self) -> float:
        """Return a monotonic reading in seconds."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of real time."""
        await anyio.sleep(seconds)


class FakeClock:
    """A clock that only moves when told to, or when someone sleeps on it.

    ``sleep`` advances the clock by the requested amount and yields once to the event loop,
    so code under test that sleeps for minutes finishes at once while its arithmetic on time
    stays exact.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        """Return the fake wall-clock time."""
        return self._wall

    def monotonic(self) -> float:
        """Return the fake monotonic time."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        self._wall += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the sleep, advance the clock and yield to the loop."""
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))
        await anyio.lowlevel.checkpoint()
