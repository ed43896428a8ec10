"""Why a run waits, in words for the live view and the plain log: soaking (with a countdown),
waiting for the VPSes of a wave to be ready (and the slowest one), cooling down after 429s,
refreshing sessions, a failure budget about to trip; and pre-flight's progress line.

Pure functions of what the view already holds (the run's phase, the live numbers, the
accepted VPSes of the current wave): nothing here reads a clock or prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.report import duration
from orchestrator.run.phase import RunPhase
from orchestrator.run.stats import StatsSnapshot


@dataclass(frozen=True)
class Reason:
    """One reason the run waits: its kind (a plain log prints a line when the kinds change)
    and its text."""

    kind: str
    text: str


@dataclass(frozen=True)
class WaveWait:
    """The current wave's VPSes that were accepted and are not final yet."""

    wave: int
    waiting: int
    sending: int
    slowest: str | None
    slowest_since: float | None


def reasons(
    phase: RunPhase | None,
    snap: StatsSnapshot,
    wait: WaveWait | None,
    now: float,
    hostnames: Mapping[str, str],
) -> list[Reason]:
    """Every reason the run is waiting now, most pressing first (empty when it is sending
    freely). ``now`` is wall-clock seconds, like ``phase.soak_until`` and ``slowest_since``."""
    out: list[Reason] = []
    if snap.cooling_s > 0:
        out.append(Reason("cooling", f"cooling down after 429s: {duration(snap.cooling_s)} left"))
    if phase is not None:
        try:
            refreshing = phase.refreshing()
        except Exception:  # a display must not take the run down
            refreshing = False
        if refreshing:
            out.append(Reason("refreshing", "refreshing sessions (one auth call for the fleet)"))
        if phase.soak_until is not None and phase.soak_until > now:
            left = duration(phase.soak_until - now)
            out.append(Reason("soaking", f"soaking before wave {phase.soak_before}: {left} left"))
    if wait is not None and wait.waiting and not wait.sending:
        text = f"{wait.waiting} VPS(es) of wave {wait.wave} to be ready"
        if wait.slowest is not None and wait.slowest_since is not None:
            # The host name alone when there is one: the line must fit 80 columns.
            who = hostnames.get(wait.slowest) or wait.slowest
            text += f"; slowest {who}, accepted {duration(max(0.0, now - wait.slowest_since))} ago"
        out.append(Reason("installing", text))
    budget = _budget(phase)
    if budget is not None:
        out.append(budget)
    return out


def _budget(phase: RunPhase | None) -> Reason | None:
    """A failure budget about to trip: at most one failure left, and failures counted."""
    if phase is None:
        return None
    closest = phase.budget_left()
    if closest is None or phase.run_failures + phase.wave_failures == 0:
        return None
    what, left = closest
    if left > 1:
        return None
    if left <= 0:
        text = f"{what}'s failure budget is spent: the next failure stops the run"
    else:
        text = f"{what}'s failure budget: one more failure allowed, then the run stops"
    return Reason("budget", text)


def preflight_line(done: int, total: int) -> str:
    """Pre-flight's progress in words."""
    if total and done >= total:
        return f"pre-flight: {total} VPS(es) checked"
    return f"pre-flight: {done}/{total} VPS(es) checked"
