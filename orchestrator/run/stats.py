"""The live numbers of a run (current rate, throttles, retries, session refreshes), read
through callables so that a view can show them without holding the run's parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _zero() -> int:
    return 0


@dataclass(frozen=True)
class StatsSnapshot:
    """The live numbers at one moment."""

    rate: float = 0.0
    throttles: int = 0
    retries: int = 0
    refreshes: int = 0


@dataclass(frozen=True)
class RunStats:
    """Where the live numbers come from, as callables, so the wiring passes lambdas::

    RunStats(rate=lambda: limits.requests.rate, throttles=lambda: limits.requests.throttles,
             retries=lambda: budget.retries, refreshes=lambda: book.refreshes)
    """

    rate: Callable[[], float] = _zero
    throttles: Callable[[], int] = _zero
    retries: Callable[[], int] = _zero
    refreshes: Callable[[], int] = _zero

    def snapshot(self) -> StatsSnapshot:
        """Read every number now; one that fails to read shows as 0 (never raises)."""

        def read(fn: Callable[[], float]) -> float:
            try:
                return fn()
            except Exception:  # a display must not take the run down
                return 0

        return StatsSnapshot(
            rate=float(read(self.rate)),
            throttles=int(read(self.throttles)),
            retries=int(read(self.retries)),
            refreshes=int(read(self.refreshes)),
        )
