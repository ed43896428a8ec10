"""Reports folded from the journal's records: text, JSON, JUnit XML and NDJSON events.

Every function takes what the journal returns — a ``RunRecord``, the run's ``TargetRecord``s
and (optionally) its ``AttemptRecord``s — and returns text or plain data; nothing here reads
the journal, the clock or the environment, and nothing prints. The records hold no secrets
(the journal redacts reasons and messages and never stores passwords or user data), so the
reports are secret-free by construction; every function also takes an optional
``redact: Callable[[str], str]`` (e.g. a ``secrets.Redactor``) applied to every reason.

Times are wall-clock Unix seconds, as the journal stores them.

**time to ready** of a VPS is ``ready_at - queued_at``: from the moment the VPS was queued
(added to the run, i.e. the run's start) to the moment readiness was confirmed. It therefore
includes waiting for earlier waves and soak time — for a disaster-recovery drill it is the
recovery time of that VPS as seen from the start of the drill. Only VPSes that ended ``ready``
have one; the fleet percentiles are taken over them, with the nearest-rank method (the p-th
percentile is the smallest observed value with at least p % of the values at or below it), so
every percentile is an observed time. The phases of one VPS are ``queued_at`` → ``sent_at``
(its latest intent) → ``accepted_at`` → ``ready_at``; ``ended_at`` is when it reached its
final state (the journal keeps the latest time of each phase: a VPS sent twice shows its
second send, and ``sends`` says how many there were). **send to ready** is ``ready_at -
sent_at``, the true cost of one reinstall, and the run's **recovery time** is its first send →
last ready (``orchestrator.report.recovery``; checked against the RTO recorded with the run).

JSON report, schema ``edis-fleet/report/v1`` (``REPORT_SCHEMA`` in ``report_schema`` is the
machine-readable form, checked by the tests)::

    {
      "schema": "edis-fleet/report/v1",
      "run": {"id", "status" (RunStatus value), "fleet" (manifest file name without suffix),
              "manifest_path", "manifest_sha256", "plan_sha256", "started_at", "ended_at"
              (null while running), "duration_s", "failures", "retries",
              "counters" {name: int, e.g. throttles, session_refreshes},
              "verdict" (the whole run judged, ``report.contract``: ok, failed, in-doubt,
              aborted, interrupted, running, rto-missed, crashed, busy), "exit_code" (the
              verdict's process exit code; null while running), "error" (why a crashed run
              stopped, redacted; "" otherwise), "rto_s" (null: no RTO)},
      "totals": {"targets": int, and one int per TargetState value: "pending", "intent",
                 "accepted", "ready", "failed", "in_doubt", "skipped"},
      "waves": [{"wave": int, "targets": int, and one int per TargetState value}],
      "targets": [{"kvm_id", "hostname", "image", "wave", "position", "state", "reason",
                   "sends", "timings": {"queued_at", "sent_at", "accepted_at", "ready_at",
                   "ended_at", "time_to_ready_s"} (numbers or null),
                   readiness mode ssh, only for a VPS whose reinstall was proven: "proof"
                   ("pinned": this run's host key; "key-changed": another key than the one
                   scanned before the send; "weaker": SSH was down before the send) and
                   "known_hosts" (its proven host key as a known_hosts line)}],
                  # wave, position order
      "percentiles": {"time_to_ready_s": {"count": int, "p50", "p95", "max"} (null: no VPS
                      was ready), the same for "queue_to_ready_s" (= time to ready) and
                      "send_to_ready_s" (latest send → ready), and "install_s_by_image"
                      {image: {...}} (accepted → ready)},
      "recovery": {"first_send_at", "last_ready_at", "recovery_s" (first send → last ready),
                   "rto_s", "rto_met" (true/false, null: no RTO or not judged),
                   "waves": [{"wave", "first_send_at", "last_ready_at", "recovery_s",
                              "send_to_ready_s": {"count", "p50", "p95", "max"}}]},
      "attempts": {"total": int, and one int per outcome class: "not_sent", "throttled",
                   "session", "rejected", "accepted", "in_doubt"}
    }

NDJSON events (``ndjson_events`` after the run, ``NdjsonSink`` live): one JSON object per line
and state change, ``{"at": Unix seconds, "time": ISO 8601 UTC, "run_id", "kvm_id",
"hostname" (null when unknown), "wave", "state" (a TargetState value), "reason"}``. After the
run they are derived from the per-phase times (``pending`` at ``queued_at``, ``intent`` at
``sent_at``, ``accepted``, then the final state), sorted by time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

# Reports are written whole (re-exported: the report API has always offered it).
from orchestrator.atomic import write_atomic
from orchestrator.journal import AttemptRecord, RunRecord, TargetRecord
from orchestrator.model import STATE_ORDER, TargetEvent, TargetState
from orchestrator.report.recovery import recovery
from orchestrator.report.schema import REPORT_SCHEMA, SCHEMA_ID
from orchestrator.report.summary import (
    Redact,
    Summary,
    TargetRow,
    iso_time,
    no_redact,
    percentile,
    summarize,
)
from orchestrator.report.text import IN_DOUBT_ADVICE, junit_report, text_report

__all__ = [
    "IN_DOUBT_ADVICE",
    "REPORT_SCHEMA",
    "SCHEMA_ID",
    "NdjsonSink",
    "Redact",
    "Summary",
    "TargetRow",
    "event_objects",
    "iso_time",
    "json_report",
    "junit_report",
    "ndjson_events",
    "percentile",
    "summarize",
    "text_report",
    "write_atomic",
]


def _r3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def json_report(
    run: RunRecord,
    targets: Sequence[TargetRecord],
    attempts: Sequence[AttemptRecord] = (),
    *,
    redact: Redact | None = None,
) -> dict[str, Any]:
    """Return the JSON report (schema ``edis-fleet/report/v1``, see the module docstring) as
    JSON-ready data; ``json.dumps`` it to write it. Raises nothing for consistent records."""
    s = summarize(run, targets, attempts, redact=redact)
    rec = recovery(run, targets)
    return {
        "schema": SCHEMA_ID,
        "run": {
            "id": run.id,
            "status": run.status.value,
            "verdict": rec.verdict.value,
            "exit_code": rec.tally.exit_code,
            "error": run.error,
            "rto_s": rec.rto_s,
            "fleet": s.fleet,
            "manifest_path": run.manifest_path,
            "manifest_sha256": run.manifest_sha256,
            "plan_sha256": run.plan_sha256,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "duration_s": round(s.duration_s, 3),
            "failures": run.failures,
            "retries": run.retries,
            "counters": {str(k): int(v) for k, v in sorted(run.counters.items())},
        },
        "totals": {"targets": len(s.rows), **s.totals},
        "waves": [
            {"wave": wave, "targets": sum(counts.values()), **counts}
            for wave, counts in s.waves.items()
        ],
        "targets": [_target_json(r) for r in s.rows],
        "percentiles": {
            "time_to_ready_s": {"count": s.ttr_count, **{k: _r3(v) for k, v in s.ttr.items()}},
            "queue_to_ready_s": rec.queue_to_ready.to_json(),
            "send_to_ready_s": rec.send_to_ready.to_json(),
            "install_s_by_image": {k: v.to_json() for k, v in rec.install_by_image.items()},
        },
        "recovery": rec.to_json(),
        "attempts": {"total": sum(s.attempts.values()), **s.attempts},
    }


def _target_json(row: TargetRow) -> dict[str, Any]:
    t = row.record
    return {
        "kvm_id": t.kvm_id,
        "hostname": t.hostname,
        "image": t.image,
        "wave": t.wave,
        "position": t.position,
        "state": t.state.value,
        "reason": row.reason,
        "sends": t.sends,
        "timings": {
            "queued_at": t.queued_at,
            "sent_at": t.sent_at,
            "accepted_at": t.accepted_at,
            "ready_at": t.ready_at,
            "ended_at": t.ended_at,
            "time_to_ready_s": _r3(row.time_to_ready_s),
        },
        # Journal facts (schema version 3), not parsed from the reason: present only when
        # the reinstall was proven.
        **({"proof": t.proof} if t.proof else {}),
        **({"known_hosts": t.known_hosts} if t.known_hosts else {}),
    }


# --------------------------------------------------------------------------- NDJSON events


def _event(
    at: float,
    state: TargetState,
    reason: str,
    *,
    run_id: str | None,
    kvm_id: str,
    hostname: str | None,
    wave: int,
) -> dict[str, Any]:
    """One NDJSON event object (the format in the module docstring)."""
    return {
        "at": at,
        "time": iso_time(at),
        "run_id": run_id,
        "kvm_id": kvm_id,
        "hostname": hostname,
        "wave": wave,
        "state": state.value,
        "reason": reason,
    }


def event_objects(
    run: RunRecord, targets: Sequence[TargetRecord], *, redact: Redact | None = None
) -> list[dict[str, Any]]:
    """Derive the state-change events of a run from its targets' phase times, oldest first.

    Per VPS: ``pending`` at ``queued_at``, ``intent`` at ``sent_at`` (its latest send),
    ``accepted`` at ``accepted_at``, then its final state (``ready`` at ``ready_at``, or
    ``failed``/``in_doubt``/``skipped`` at ``ended_at``). The record's reason goes with the
    event of its current state. Ties in time keep each VPS's phase order, then wave order.
    """
    clean = redact or no_redact
    keyed: list[tuple[float, int, int, int, str, dict[str, Any]]] = []
    for t in targets:
        times: dict[TargetState, float | None] = {
            TargetState.PENDING: t.queued_at,
            TargetState.INTENT: t.sent_at,
            TargetState.ACCEPTED: t.accepted_at,
        }
        if t.state is TargetState.READY:
            times[TargetState.READY] = t.ready_at
        elif t.state.final:
            times[t.state] = t.ended_at
        for state, at in times.items():
            if at is None:
                continue
            reason = clean(t.reason) if state is t.state else ""
            obj = _event(
                at, state, reason, run_id=run.id, kvm_id=t.kvm_id, hostname=t.hostname,
                wave=t.wave,
            )  # fmt: skip
            keyed.append((at, STATE_ORDER.index(state), t.wave, t.position, t.kvm_id, obj))
    keyed.sort(key=lambda k: k[:5])
    return [k[5] for k in keyed]


def ndjson_events(
    run: RunRecord, targets: Sequence[TargetRecord], *, redact: Redact | None = None
) -> str:
    """Return ``event_objects`` as NDJSON text: one compact JSON object per line, each line
    ending in a newline (empty text for no events)."""
    return "".join(
        json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"
        for obj in event_objects(run, targets, redact=redact)
    )


class NdjsonSink:
    """A live ``EventSink`` watcher writing one NDJSON event line per ``TargetEvent`` to
    ``stream`` (``--events -``), flushed per line, in the format of ``ndjson_events``.

    ``before_send`` does nothing (the journal makes intents durable, not this sink). ``emit``
    never raises into the scheduler: the first write error (a closed pipe) is kept in
    ``error`` and the sink goes silent.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        run_id: str | None = None,
        hostnames: Mapping[str, str] | None = None,
        redact: Redact | None = None,
    ) -> None:
        self.stream = stream
        self.run_id = run_id
        self._hostnames = dict(hostnames or {})
        self._redact = redact or no_redact
        # The wave of each VPS's first event: the scheduler reports a send cancelled
        # mid-flight with wave 0, after a first event that had the real one.
        self._waves: dict[str, int] = {}
        self.error: Exception | None = None

    async def before_send(self, kvm_id: str, wave: int) -> None:
        """Nothing to do: watching sinks do not make intents durable."""

    def emit(self, event: TargetEvent) -> None:
        """Write ``event`` as one JSON line and flush (never raises; see ``error``)."""
        if self.error is not None:
            return
        wave = self._waves.setdefault(event.kvm_id, event.wave)
        obj = _event(
            event.at, event.state, self._redact(event.reason), run_id=self.run_id,
            kvm_id=event.kvm_id, hostname=self._hostnames.get(event.kvm_id), wave=wave,
        )  # fmt: skip
        try:
            self.stream.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
            self.stream.flush()
        except (OSError, ValueError) as exc:  # a closed pipe or stream: stop, do not crash
            self.error = exc
