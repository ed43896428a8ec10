"""A run's journal records folded into a ``Summary``: the one input of every report format.

See ``orchestrator.report.formats`` for what the reports contain and how times are defined.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath

from orchestrator.journal import AttemptRecord, RunRecord, TargetRecord
from orchestrator.model import Outcome, TargetState

Redact = Callable[[str], str]
"""A redaction filter, e.g. ``secrets.Redactor``: returns the text with secrets masked."""


def no_redact(text: str) -> str:
    """Return ``text`` unchanged (the default ``redact``)."""
    return text


def percentile(values: Iterable[float], p: float) -> float | None:
    """Return the nearest-rank ``p``-th percentile of ``values`` (None when empty).

    The smallest value with at least ``p`` % of the values at or below it; ``p`` = 100 is the
    maximum. Raises ``ValueError`` unless 0 < ``p`` <= 100.
    """
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {p}")
    ordered = sorted(values)
    if not ordered:
        return None
    # round() first: 0.95 * 20 is 19.000000000000004 in binary floating point.
    rank = max(1, math.ceil(round(p * len(ordered) / 100, 9)))
    return ordered[rank - 1]


def iso_time(at: float) -> str:
    """Return Unix time ``at`` as ISO 8601 UTC with milliseconds (``2027-01-15T08:00:00.250Z``)."""
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(frozen=True)
class TargetRow:
    """One VPS of a report: its record, its redacted reason and its time to ready."""

    record: TargetRecord
    reason: str
    time_to_ready_s: float | None

    @property
    def elapsed_s(self) -> float | None:
        """Seconds from queued to the final state (time to ready for a ready VPS), or None
        while it is not final."""
        t = self.record
        if self.time_to_ready_s is not None:
            return self.time_to_ready_s
        if t.state.final and t.ended_at is not None:
            return max(0.0, t.ended_at - t.queued_at)
        return None


@dataclass(frozen=True)
class Summary:
    """A run folded for reporting. Build it with ``summarize``.

    ``totals`` and each of ``waves`` count VPSes per ``TargetState`` value (every state
    present, zeros included); ``attempts`` counts API calls per outcome class;
    ``ttr`` holds the time-to-ready percentiles ``p50``, ``p95``, ``max`` (None when no VPS
    was ready) and ``ttr_count`` how many VPSes they cover.
    """

    run: RunRecord
    fleet: str
    rows: tuple[TargetRow, ...]
    totals: Mapping[str, int]
    waves: Mapping[int, Mapping[str, int]]
    attempts: Mapping[str, int]
    ttr: Mapping[str, float | None]
    ttr_count: int
    duration_s: float

    def in_state(self, *states: TargetState) -> list[TargetRow]:
        """The rows whose VPS is in one of ``states``, in wave and position order."""
        return [r for r in self.rows if r.record.state in states]


def summarize(
    run: RunRecord,
    targets: Sequence[TargetRecord],
    attempts: Sequence[AttemptRecord] = (),
    *,
    redact: Redact | None = None,
) -> Summary:
    """Fold a run's records into a ``Summary`` (the input of every report format).

    ``targets`` may come in any order; the summary orders them by wave and position. Raises
    nothing for consistent records.
    """
    clean = redact or no_redact
    rows = tuple(
        TargetRow(
            record=t,
            reason=clean(t.reason),
            time_to_ready_s=(
                max(0.0, t.ready_at - t.queued_at)
                if t.state is TargetState.READY and t.ready_at is not None
                else None
            ),
        )
        for t in sorted(targets, key=lambda t: (t.wave, t.position, t.kvm_id))
    )
    totals = {s.value: 0 for s in TargetState}
    waves: dict[int, dict[str, int]] = {}
    for r in rows:
        totals[r.record.state.value] += 1
        wave = waves.setdefault(r.record.wave, {s.value: 0 for s in TargetState})
        wave[r.record.state.value] += 1
    counted = Counter(a.outcome for a in attempts)
    outcomes = {o.value: counted[o] for o in Outcome}
    ready = [r.time_to_ready_s for r in rows if r.time_to_ready_s is not None]
    end = run.ended_at if run.ended_at is not None else run.updated_at
    return Summary(
        run=run,
        fleet=PurePath(run.manifest_path).stem or "fleet",
        rows=rows,
        totals=totals,
        waves=dict(sorted(waves.items())),
        attempts=outcomes,
        ttr={
            "p50": percentile(ready, 50),
            "p95": percentile(ready, 95),
            "max": max(ready, default=None),
        },
        ttr_count=len(ready),
        duration_s=max(0.0, end - run.started_at),
    )
