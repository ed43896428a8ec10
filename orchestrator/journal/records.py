"""The records the journal hands back, and how they are read from a row of either backend.

``RunStatus`` and the frozen dataclasses below are the plain data that comes out of the
journal (``schema.py`` says what each column means); ``run_from_row``, ``target_from_row`` and
``attempt_from_row`` build them from a SQLite or PostgreSQL row and refuse values this version
does not know; ``mask_options`` masks secret-looking keys of a run's options before they are
written.
"""

from __future__ import annotations

import enum
import json
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from orchestrator.errors import JournalError
from orchestrator.model import Outcome, TargetState


class RunStatus(enum.StrEnum):
    """Where a whole run stands."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"
    IN_DOUBT = "in_doubt"
    # Version 2: every VPS back but over the RTO; stopped by an internal error or a fault of
    # this machine (``runs.error`` says which). The words of ``report.contract``.
    RTO_MISSED = "rto_missed"
    CRASHED = "crashed"
    # Version 3: refused because another run holds some of its VPSes; nothing was sent.
    BUSY = "busy"


@dataclass(frozen=True)
class TargetSpec:
    """One VPS to add to a run (what the plan says about it).

    ``user_data_sha256`` is a hex SHA-256 digest or None; anything else is refused, so the
    document itself can never end up in the journal by mistake.
    """

    kvm_id: str
    wave: int
    position: int
    image: str
    hostname: str
    user_data_sha256: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``, with its JSON columns parsed."""

    id: str
    manifest_path: str
    manifest_sha256: str
    plan_sha256: str
    options: Mapping[str, Any]
    pid: int
    hostname: str
    started_at: float
    updated_at: float
    ended_at: float | None
    status: RunStatus
    wave_position: int
    failures: int
    retries: int
    counters: Mapping[str, int]
    # Version 2: why a crashed run stopped (redacted), and when each wave became ready.
    error: str = ""
    wave_ready: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetRecord:
    """One row of ``targets``."""

    run_id: str
    kvm_id: str
    wave: int
    position: int
    image: str
    hostname: str
    user_data_sha256: str | None
    state: TargetState
    sends: int
    queued_at: float
    sent_at: float | None
    accepted_at: float | None
    ready_at: float | None
    ended_at: float | None
    reason: str
    # Version 2: the in-doubt resend was decided (after the window from ``sent_at``) / sent.
    resend_decided_at: float | None = None
    resent_at: float | None = None
    # Version 3: the pre-send host key (``''``: nothing answered; None: no scan), the proof
    # the reinstall got and its proven host key as a known_hosts line (``''``: none).
    presend_key: str | None = None
    proof: str = ""
    known_hosts: str = ""


@dataclass(frozen=True)
class AttemptRecord:
    """One row of ``attempts``."""

    run_id: str
    kvm_id: str | None
    at: float
    endpoint: str
    outcome: Outcome
    http_status: int | None
    message: str
    seconds: float


@dataclass(frozen=True)
class LockRecord:
    """One row of ``locks``."""

    kvm_id: str
    run_id: str
    pid: int
    hostname: str
    acquired_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class LockTakeover:
    """A stale lock that ``acquire_locks`` took over; ``why`` says how it was found stale."""

    kvm_id: str
    previous_run_id: str
    previous_pid: int
    previous_hostname: str
    previous_heartbeat_at: float
    why: str


# Keys whose values are never written, whatever the caller passes in a run's options.
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|signature|user_?data|api_?key|credential", re.IGNORECASE
)


def mask_options(value: Any) -> Any:
    """Return a copy of JSON-like ``value`` with the values of secret-looking keys as ``***``."""
    if isinstance(value, Mapping):
        return {
            str(k): "***" if _SECRET_KEY.search(str(k)) else mask_options(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_options(v) for v in value]
    return value


E = TypeVar("E", bound=enum.Enum)


def known_value(kind: type[E], value: Any, what: str) -> E:
    """Return ``kind(value)``; raise ``JournalError`` naming ``what`` for a value this
    version does not know (a journal written by another version, or edited by hand)."""
    try:
        return kind(value)
    except ValueError:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise JournalError(
            f"journal {what} has an unknown value {shown}; expected one of "
            f"{', '.join(str(k.value) for k in kind)}"
        ) from None


def _json(text: Any, what: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise JournalError(f"journal {what} is not readable JSON") from None


def run_from_row(row: sqlite3.Row | Mapping[str, Any]) -> RunRecord:
    """Build a ``RunRecord`` from a ``SELECT * FROM runs`` row (SQLite row or a mapping).

    Raises ``JournalError`` for a status or options this version cannot read.
    """
    return RunRecord(
        id=row["id"],
        manifest_path=row["manifest_path"],
        manifest_sha256=row["manifest_sha256"],
        plan_sha256=row["plan_sha256"],
        options=_json(row["options_json"], f"run {row['id']} options"),
        pid=row["pid"],
        hostname=row["hostname"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        ended_at=row["ended_at"],
        status=known_value(RunStatus, row["status"], f"run {row['id']} status"),
        wave_position=row["wave_position"],
        failures=row["failures"],
        retries=row["retries"],
        counters=_json(row["counters_json"], f"run {row['id']} counters"),
        error=row["error"],
        wave_ready={
            int(k): float(v) for k, v in _json(row["waves_json"], f"run {row['id']} waves").items()
        },
    )


def attempt_from_row(row: sqlite3.Row | Mapping[str, Any]) -> AttemptRecord:
    """Build an ``AttemptRecord`` from a row of ``attempts`` (the record's columns).

    Raises ``JournalError`` for an outcome this version does not know (a journal written by
    another version, or edited by hand): a report must not guess what such an attempt meant.
    """
    try:
        outcome = Outcome(row["outcome"])
    except ValueError:
        raise JournalError(
            f"journal attempt of {row['kvm_id'] or 'the account'} at {row['at']} has an "
            f"unknown outcome {row['outcome']!r}; expected one of "
            f"{', '.join(o.value for o in Outcome)}"
        ) from None
    return AttemptRecord(
        run_id=row["run_id"],
        kvm_id=row["kvm_id"],
        at=row["at"],
        endpoint=row["endpoint"],
        outcome=outcome,
        http_status=row["http_status"],
        message=row["message"],
        seconds=row["seconds"],
    )


def target_from_row(row: sqlite3.Row | Mapping[str, Any]) -> TargetRecord:
    """Build a ``TargetRecord`` from a ``SELECT * FROM targets`` row (SQLite row or a mapping).

    Raises ``JournalError`` for a state this version does not know.
    """
    fields = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row is not a Mapping
    what = f"state of {fields.get('kvm_id')} in run {fields.get('run_id')}"
    fields["state"] = known_value(TargetState, fields["state"], what)
    return TargetRecord(**fields)
