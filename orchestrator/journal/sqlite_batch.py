"""Writing one batch of the SQLite journal: outcomes, attempts, progress, facts and intents.

``store.Store.write_batch`` runs ``write`` inside its ``BEGIN IMMEDIATE`` transaction, so the
whole batch commits at once. Each outcome is one ``UPDATE`` guarded by the states it may follow
(``schema.OUTCOME_FROM``); each intent request is checked first (target of the run, state,
lock held by this process) and written all or nothing. ``pg_batch.py`` is its PostgreSQL twin.
"""

from __future__ import annotations

import sqlite3

from orchestrator.journal.batch import (
    FACT_COLUMNS,
    Batch,
    IntentRequest,
    intent_problem,
    note_misfit,
    progress_columns,
)
from orchestrator.journal.schema import OUTCOME_FROM, sql_list
from orchestrator.model import TargetState

_PHASE_COLUMNS: dict[TargetState, tuple[str, ...]] = {
    TargetState.PENDING: (),
    TargetState.ACCEPTED: ("accepted_at",),
    TargetState.READY: ("ready_at", "ended_at"),
    TargetState.FAILED: ("ended_at",),
    TargetState.IN_DOUBT: ("ended_at",),
    TargetState.SKIPPED: ("ended_at",),
}
# One UPDATE per outcome state, guarded by the states it may follow (``OUTCOME_FROM``). Built
# from our own enums only, never from input.
_OUTCOME_SQL: dict[TargetState, str] = {
    state: (
        f"UPDATE targets SET state = '{state.value}', reason = :reason"  # noqa: S608
        + "".join(f", {col} = :at" for col in _PHASE_COLUMNS[state])
        + " WHERE run_id = :run AND kvm_id = :kvm AND state IN ("
        + sql_list(OUTCOME_FROM[state])
        + ")"
    )
    for state in OUTCOME_FROM
}
# Attempts for an unknown run are dropped rather than failing the whole batch: a foreign-key
# error would fail every later batch too, since the rows of a failed batch are retried.
_INSERT_ATTEMPT = """
    INSERT INTO attempts (run_id, kvm_id, at, endpoint, outcome, http_status, message, seconds)
    SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE EXISTS (SELECT 1 FROM runs WHERE id = ?1)
"""
# The in-doubt policy decided to resend (schema version 2): once, and never after the resend.
_DECIDE_RESEND = (
    "UPDATE targets SET resend_decided_at = ? WHERE run_id = ? AND kvm_id = ?"
    " AND resend_decided_at IS NULL AND resent_at IS NULL"
)


def write(
    conn: sqlite3.Connection,
    batch: Batch,
    *,
    pid: int,
    hostname: str,
    ignored: list[tuple[str, str, TargetState, str | None]],
) -> dict[IntentRequest, str]:
    """Write ``batch`` within the open transaction of ``conn``: outcomes, attempts, progress,
    resend decisions, facts, then intents.

    Outcomes that do not fit their target's state are appended to ``ignored`` and logged, not
    applied. Returns the refused intent requests with the reason (a refused request writes
    nothing; ``pid`` and ``hostname`` are the process whose locks an intent needs).
    """
    for run_id, kvm_id, state, reason, at in batch.outcomes:
        args = {"run": run_id, "kvm": kvm_id, "reason": reason, "at": at}
        if conn.execute(_OUTCOME_SQL[state], args).rowcount == 0:
            row = conn.execute(
                "SELECT state FROM targets WHERE run_id = ? AND kvm_id = ?", (run_id, kvm_id)
            ).fetchone()
            note_misfit(ignored, run_id, kvm_id, state, None if row is None else str(row[0]))
    conn.executemany(_INSERT_ATTEMPT, batch.attempts)
    for run_id, fields in batch.progress.items():
        sets = "".join(f"{c} = :{c}, " for c in progress_columns(fields))
        conn.execute(
            f"UPDATE runs SET {sets}updated_at = :updated_at WHERE id = :run",  # noqa: S608
            {**fields, "run": run_id},
        )
    conn.executemany(_DECIDE_RESEND, batch.resends)
    for run_id, kvm_id, column, value in batch.facts:
        if column in FACT_COLUMNS:
            conn.execute(
                f"UPDATE targets SET {column} = ? WHERE run_id = ? AND kvm_id = ?",  # noqa: S608
                (value, run_id, kvm_id),
            )
    refused: dict[IntentRequest, str] = {}
    for req in batch.intents:
        problem = _intent_problem(conn, req, pid=pid, hostname=hostname)
        if problem:
            refused[req] = problem
            continue
        conn.executemany(
            "UPDATE targets SET state = 'intent', sent_at = ?, sends = sends + 1, reason = '',"
            " resent_at = CASE WHEN ? THEN ? ELSE resent_at END"
            " WHERE run_id = ? AND kvm_id = ?",
            [(req.at, req.resend, req.at, req.run_id, k) for k in req.kvm_ids],
        )
    return refused


def _intent_problem(
    conn: sqlite3.Connection, req: IntentRequest, *, pid: int, hostname: str
) -> str:
    """Return why ``req`` may not be written (all of it or none), or ``""``."""
    problems: list[str] = []
    for kvm_id in req.kvm_ids:
        row = conn.execute(
            "SELECT t.state, l.run_id, l.pid, l.hostname, t.resent_at FROM targets t"
            " LEFT JOIN locks l ON l.kvm_id = t.kvm_id WHERE t.run_id = ? AND t.kvm_id = ?",
            (req.run_id, kvm_id),
        ).fetchone()
        lock = (None, None, None) if row is None else (row[1], row[2], row[3])
        problem = intent_problem(
            req.run_id,
            kvm_id,
            None if row is None else row[0],
            resent=row is not None and req.resend and row[4] is not None,
            lock=lock,
            held=lock == (req.run_id, pid, hostname),
        )
        if problem:
            problems.append(problem)
    return "; ".join(problems)
