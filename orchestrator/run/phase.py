"""What a run is doing now, for a live view: the wave, the soak, the failure budgets, whether
sessions are being refreshed and how far pre-flight got.

The scheduler (and ``execute``, for pre-flight and the session book) write a ``RunPhase``; a
view only reads it, through ``WatchesPhase``. Nothing here prints or decides anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


def _never() -> bool:
    return False


@dataclass
class RunPhase:
    """The scheduler's phase. Read-only for everyone but the scheduler and ``execute``.

    ``wave``/``wave_size``/``wave_budget``/``wave_failures``: the wave being sent or waited
    for (0 before the first); ``run_budget``/``run_failures``: the run's budget and the
    failures counted against it (a resumed run's earlier ones included); ``soak_until``: the
    wall-clock end of the soak being served (None when not soaking) and ``soak_before`` the
    wave it comes before; ``refreshing``: true
    while the session book's auth call is out.
    """

    wave: int = 0
    wave_size: int = 0
    wave_budget: int = 0
    wave_failures: int = 0
    run_budget: int = 0
    run_failures: int = 0
    soak_until: float | None = None
    soak_before: int = 0
    refreshing: Callable[[], bool] = field(default=_never)

    def budget_left(self) -> tuple[str, int] | None:
        """The budget closest to tripping, as ``(what, failures left before it trips)``; a
        budget trips one failure past it, so 0 left means the next failure stops the run.
        None before the first wave."""
        if self.wave <= 0:
            return None
        wave_left = self.wave_budget - self.wave_failures
        run_left = self.run_budget - self.run_failures
        if wave_left <= run_left:
            return f"wave {self.wave}", wave_left
        return "the run", run_left


@runtime_checkable
class WatchesPhase(Protocol):
    """A view that shows the run's phase and pre-flight's progress."""

    phase: RunPhase | None

    def preflight(self, done: int, total: int) -> None:
        """Pre-flight has checked ``done`` of ``total`` VPSes."""
