"""The live numbers of a run (current rate, throttles, retries, session refreshes, and whether
the provider is the bottleneck), read through callables so that a view can show them without
holding the run's parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.run.limits import RateLimiter


def _zero() -> int:
    return 0


def _none_per_minute() -> tuple[int, int]:
    return 0, 0


@dataclass(frozen=True)
class StatsSnapshot:
    """The live numbers at one moment."""

    rate: float = 0.0
    throttles: int = 0
    retries: int = 0
    refreshes: int = 0
    configured_rate: float = 0.0
    errors_per_min: int = 0
    throttles_per_min: int = 0
    cooling_s: float = 0.0
    """Seconds left of the current fleet-wide pause (0 when sending)."""
    cooldown_s: float = 0.0
    """Seconds of fleet-wide pause so far."""

    @property
    def provider_bound(self) -> bool:
        """True when the provider, not the configuration, sets the pace: paused, or the
        adaptive rate below 90% of the configured one."""
        return self.cooling_s > 0 or (
            self.configured_rate > 0 and self.rate < 0.9 * self.configured_rate
        )

    def provider_text(self) -> str:
        """One line on the provider: rate vs configured, errors and 429s per minute, pauses."""
        text = (
            f"{self.rate:.1f}/{self.configured_rate:g} req/s · "
            f"{self.errors_per_min} errors/min · {self.throttles_per_min} 429s/min"
        )
        if self.cooling_s > 0:
            text += f" · cooling down {self.cooling_s:.0f}s"
        if self.cooldown_s > 0:
            text += f" · paused {self.cooldown_s:.0f}s in all"
        if self.provider_bound:
            text += " · the provider is the bottleneck"
        return text


@dataclass(frozen=True)
class RunStats:
    """Where the live numbers come from, as callables, so the wiring passes lambdas::

    RunStats(rate=lambda: limits.requests.rate, throttles=lambda: limits.requests.throttles,
             retries=lambda: budget.retries, refreshes=lambda: book.refreshes)

    ``RunStats.of_limiter`` fills the provider's numbers from the run's ``RateLimiter``.
    """

    rate: Callable[[], float] = _zero
    throttles: Callable[[], int] = _zero
    retries: Callable[[], int] = _zero
    refreshes: Callable[[], int] = _zero
    configured_rate: Callable[[], float] = _zero
    per_minute: Callable[[], tuple[int, int]] = _none_per_minute
    cooling: Callable[[], float] = _zero
    cooldown: Callable[[], float] = _zero

    @classmethod
    def of_limiter(
        cls,
        limiter: RateLimiter,
        *,
        retries: Callable[[], int] = _zero,
        refreshes: Callable[[], int] = _zero,
    ) -> RunStats:
        """Read the rate, throttles, errors per minute and pauses from ``limiter``."""
        return cls(
            rate=lambda: limiter.rate,
            throttles=lambda: limiter.throttles,
            retries=retries,
            refreshes=refreshes,
            configured_rate=lambda: limiter.configured,
            per_minute=limiter.per_minute,
            cooling=lambda: limiter.cooldown_remaining,
            cooldown=lambda: limiter.cooldown_total,
        )

    def snapshot(self) -> StatsSnapshot:
        """Read every number now; one that fails to read shows as 0 (never raises)."""

        def read(fn: Callable[[], float]) -> float:
            try:
                return fn()
            except Exception:  # a display must not take the run down
                return 0

        try:
            errors_per_min, throttles_per_min = self.per_minute()
        except Exception:  # a display must not take the run down
            errors_per_min = throttles_per_min = 0
        return StatsSnapshot(
            rate=float(read(self.rate)),
            throttles=int(read(self.throttles)),
            retries=int(read(self.retries)),
            refreshes=int(read(self.refreshes)),
            configured_rate=float(read(self.configured_rate)),
            errors_per_min=errors_per_min,
            throttles_per_min=throttles_per_min,
            cooling_s=float(read(self.cooling)),
            cooldown_s=float(read(self.cooldown)),
        )
