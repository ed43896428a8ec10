"""How fast a run recovered the fleet, and whether that met its recovery time objective.

Three clocks, all folded from the journal's per-VPS phase times:

- **recovery time** of the run: first send → last ready (``first_send_at`` is the earliest
  ``sent_at`` of any VPS, ``last_ready_at`` the latest ``ready_at``); per wave the same within
  the wave. This is what a disaster-recovery drill measures against its RTO.
- **queue → ready** of a VPS: ``ready_at - queued_at``, including the wait behind earlier
  waves and soaks (what the VPS's users saw from the start of the drill).
- **send → ready** of a VPS: ``ready_at - sent_at`` (its latest send), the true cost of
  reinstalling it; **install** is ``ready_at - accepted_at``, summarised per image.

The RTO (``rto_s`` in the run's recorded options, from ``rollout.rto`` or ``apply --rto``) is
met when the recovery time is at most the target. A run that ended ``done`` but missed it
has the verdict ``rto-missed``; failures, in-doubt VPSes, aborts and interruptions take
precedence (their verdicts say more).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.journal import RunRecord, RunStatus, TargetRecord
from orchestrator.model import TargetState
from orchestrator.report.contract import Tally, Verdict, judge
from orchestrator.report.summary import percentile

__all__ = ["Recovery", "Spread", "Tally", "Verdict", "WaveRecovery", "recovery", "verdict"]


# Runs that reached their end: only their recovery time can be judged against the RTO.
_JUDGED = frozenset({RunStatus.DONE, RunStatus.FAILED, RunStatus.IN_DOUBT, RunStatus.RTO_MISSED})


@dataclass(frozen=True)
class Spread:
    """Nearest-rank percentiles of some seconds: ``count`` values, ``p50``, ``p95``, ``max``
    (None when there are none)."""

    count: int
    p50: float | None
    p95: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """Return the spread of ``values`` (any order)."""
        return cls(
            len(values), percentile(values, 50), percentile(values, 95), max(values, default=None)
        )

    def to_json(self) -> dict[str, Any]:
        """``{"count", "p50", "p95", "max"}`` with seconds rounded to milliseconds."""
        return {
            "count": self.count,
            "p50": _r3(self.p50),
            "p95": _r3(self.p95),
            "max": _r3(self.max),
        }


@dataclass(frozen=True)
class WaveRecovery:
    """One wave: its size, how many were sent and ready, first send → last ready."""

    wave: int
    targets: int
    sent: int
    ready: int
    first_send_at: float | None
    last_ready_at: float | None
    last_end_at: float | None
    send_to_ready: Spread

    @property
    def recovery_s(self) -> float | None:
        """First send → last ready of the wave (None when nothing was sent or ready)."""
        return _span(self.first_send_at, self.last_ready_at)


@dataclass(frozen=True)
class Recovery:
    """A run's recovery times and RTO check (see the module docstring)."""

    status: RunStatus
    first_send_at: float | None
    last_ready_at: float | None
    queue_to_ready: Spread
    send_to_ready: Spread
    install_by_image: Mapping[str, Spread]
    waves: tuple[WaveRecovery, ...]
    rto_s: float | None
    # The state of every VPS of the run: the verdict is judged from all of them.
    states: tuple[TargetState, ...] = ()

    @property
    def recovery_s(self) -> float | None:
        """First send → last ready of the run (None when nothing was sent or ready)."""
        return _span(self.first_send_at, self.last_ready_at)

    @property
    def rto_met(self) -> bool | None:
        """True/False when the run has an RTO and reached its end with at least one VPS
        ready; None otherwise (no target, still running, stopped early, nothing recovered)."""
        if self.rto_s is None or self.status not in _JUDGED or self.recovery_s is None:
            return None
        return self.recovery_s <= self.rto_s

    @property
    def tally(self) -> Tally:
        """The run judged from its status, every VPS's state and the RTO (``verdict.judge``)."""
        return judge(self.status, self.states, rto_met=self.rto_met)

    @property
    def verdict(self) -> Verdict:
        """The run's verdict (``verdict.judge``: the one table of verdicts and exit codes)."""
        return self.tally.verdict

    def to_json(self) -> dict[str, Any]:
        """The ``recovery`` object of the JSON report."""
        return {
            "first_send_at": self.first_send_at,
            "last_ready_at": self.last_ready_at,
            "recovery_s": _r3(self.recovery_s),
            "rto_s": self.rto_s,
            "rto_met": self.rto_met,
            "waves": [
                {
                    "wave": w.wave,
                    "first_send_at": w.first_send_at,
                    "last_ready_at": w.last_ready_at,
                    "recovery_s": _r3(w.recovery_s),
                    "send_to_ready_s": w.send_to_ready.to_json(),
                }
                for w in self.waves
            ],
        }


def _r3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


def rto_of(run: RunRecord) -> float | None:
    """Return the RTO recorded with the run (seconds), or None when it has none (or the
    recorded value is not a positive number: a report must not invent a target)."""
    value = run.options.get("rto_s")
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def send_to_ready(t: TargetRecord) -> float | None:
    """Seconds from the VPS's latest send to ready, or None when it is not ready."""
    if t.state is not TargetState.READY or t.ready_at is None or t.sent_at is None:
        return None
    return max(0.0, t.ready_at - t.sent_at)


def queue_to_ready(t: TargetRecord) -> float | None:
    """Seconds from queued to ready, or None when it is not ready."""
    if t.state is not TargetState.READY or t.ready_at is None:
        return None
    return max(0.0, t.ready_at - t.queued_at)


def install_time(t: TargetRecord) -> float | None:
    """Seconds from accepted to ready, or None when it is not ready."""
    if t.state is not TargetState.READY or t.ready_at is None or t.accepted_at is None:
        return None
    return max(0.0, t.ready_at - t.accepted_at)


def end_of(t: TargetRecord) -> float | None:
    """When the VPS reached its final state (None while it has not)."""
    if t.state is TargetState.READY:
        return t.ready_at
    return t.ended_at if t.state.final else None


def recovery(run: RunRecord, targets: Sequence[TargetRecord]) -> Recovery:
    """Fold a run's records into its ``Recovery``. Raises nothing."""
    by_wave: dict[int, list[TargetRecord]] = {}
    for t in targets:
        by_wave.setdefault(t.wave, []).append(t)
    waves = tuple(_wave(w, members) for w, members in sorted(by_wave.items()))
    sends = [t.sent_at for t in targets if t.sent_at is not None]
    readies = [t.ready_at for t in targets if t.state is TargetState.READY and t.ready_at]
    installs: dict[str, list[float]] = {}
    for t in targets:
        seconds = install_time(t)
        if seconds is not None:
            installs.setdefault(t.image, []).append(seconds)
    return Recovery(
        status=run.status,
        first_send_at=min(sends, default=None),
        last_ready_at=max(readies, default=None),
        queue_to_ready=Spread.of([v for t in targets if (v := queue_to_ready(t)) is not None]),
        send_to_ready=Spread.of([v for t in targets if (v := send_to_ready(t)) is not None]),
        install_by_image={image: Spread.of(v) for image, v in sorted(installs.items())},
        waves=waves,
        rto_s=rto_of(run),
        states=tuple(t.state for t in targets),
    )


def _wave(wave: int, members: Sequence[TargetRecord]) -> WaveRecovery:
    sends = [t.sent_at for t in members if t.sent_at is not None]
    readies = [t.ready_at for t in members if t.state is TargetState.READY and t.ready_at]
    ends = [e for t in members if (e := end_of(t)) is not None]
    return WaveRecovery(
        wave=wave,
        targets=len(members),
        sent=len(sends),
        ready=len(readies),
        first_send_at=min(sends, default=None),
        last_ready_at=max(readies, default=None),
        last_end_at=max(ends, default=None),
        send_to_ready=Spread.of([v for t in members if (v := send_to_ready(t)) is not None]),
    )


def verdict(run: RunRecord, targets: Sequence[TargetRecord]) -> Verdict:
    """Return the run's verdict (see ``Recovery.verdict``)."""
    return recovery(run, targets).verdict
