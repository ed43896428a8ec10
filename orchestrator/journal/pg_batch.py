"""Writing one batch of the PostgreSQL journal: outcomes, attempts, progress and intents.

``pg_store.PgStore.write_batch`` calls ``queue`` inside one transaction in pipeline mode and
reads the answers with ``Queued.finish`` once it committed. A batch costs a handful of
statements whatever its size: outcomes, attempts and intents each go as one statement over
``unnest``-ed arrays (outcomes in rounds when a VPS has more than one in a batch, so they apply
in order; the intents' checks are in their statement), and nothing is read before the commit:
the batch and its commit are one round trip. Measured on the 2-core test machine under load:
100 intents as 100 pipelined ``UPDATE``s with Python-side checks cost 25 ms, as one statement
10 ms; on a busy host every round trip waits for the server process to be scheduled.

Every statement whose answer is read has a cursor of its own (``_send``). In pipeline mode a
cursor keeps only the answer of its last statement, and reading it returns whatever answer it
holds when read; answers arrive whenever the server's output buffer fills, not only at the
commit, so a cursor reused for a second statement can be read holding the first one's rows
(an advisory lock's one column where three were expected). Whether that happens is timing
(batch size, load, the psycopg version); with one cursor per statement, read after the
commit's sync, each answer is its statement's. ``tests/test_journal_pg_batch.py`` sends
batches large enough to make the server answer mid-pipeline.

The intent check holds the lock-taking advisory lock *shared*: lock acquisition (which takes
it exclusively) waits for the intent to commit, so no takeover slips between the check "this
process holds the VPS's lock" and the intent — the same guarantee as SQLite's single writer.
Row locks (``FOR SHARE``) would do it too, but they write every locked row: measured, they
doubled a batch's cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from orchestrator.journal.batch import (
    FACT_COLUMNS,
    Batch,
    IntentRequest,
    intent_problem,
    note_misfit,
    progress_columns,
)
from orchestrator.journal.pg_schema import LOCKS_KEY
from orchestrator.journal.schema import INTENT_FROM, OUTCOME_FROM
from orchestrator.model import TargetState

# Allowed (outcome, current state) pairs (``OUTCOME_FROM``), as SQL rows: our enums only.
_FITS = ", ".join(
    f"('{new.value}', '{old.value}')" for new, olds in OUTCOME_FROM.items() for old in olds
)
_ENDS = ", ".join(
    f"'{s.value}'"
    for s in (TargetState.READY, TargetState.FAILED, TargetState.IN_DOUBT, TargetState.SKIPPED)
)
# One statement for a whole round of outcomes (one per VPS): each sets the state and stamps
# its phase columns where the current state allows it; RETURNING tells which ones did.
_OUTCOMES_SQL = f"""
    UPDATE targets t SET state = v.state, reason = v.reason,
        accepted_at = CASE WHEN v.state = 'accepted' THEN v.at ELSE t.accepted_at END,
        ready_at = CASE WHEN v.state = 'ready' THEN v.at ELSE t.ready_at END,
        ended_at = CASE WHEN v.state IN ({_ENDS}) THEN v.at ELSE t.ended_at END
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[])
         AS v(run_id, kvm_id, state, reason, at)
    WHERE t.run_id = v.run_id AND t.kvm_id = v.kvm_id
      AND (v.state, t.state) IN ({_FITS})
    RETURNING t.run_id, t.kvm_id
"""  # noqa: S608 - built from our own enums, never from input
# Attempts for an unknown run are dropped rather than failing the whole batch (as on SQLite).
_ATTEMPTS_SQL = """
    INSERT INTO attempts (run_id, kvm_id, at, endpoint, outcome, http_status, message, seconds)
    SELECT v.run_id, v.kvm_id, v.at, v.endpoint, v.outcome, v.http_status, v.message, v.seconds
    FROM unnest(%s::text[], %s::text[], %s::float8[], %s::text[], %s::text[], %s::int[],
                %s::text[], %s::float8[])
         WITH ORDINALITY AS v(run_id, kvm_id, at, endpoint, outcome, http_status, message,
                              seconds, n)
    WHERE EXISTS (SELECT 1 FROM runs WHERE id = v.run_id)
    ORDER BY v.n
"""
_INTENT_FROM = ", ".join(f"'{st.value}'" for st in INTENT_FROM)
# The intents of a whole batch in one statement: each request's VPSes are checked (a target of
# the run, in a state an intent may follow, locked by this process) and the requests with no
# problem are written, all in the statement's one snapshot; the problems come back.
_INTENTS_SQL = f"""
    WITH req AS (
        SELECT * FROM unnest(%(req)s::int[], %(run)s::text[], %(kvm)s::text[], %(at)s::float8[],
                             %(resend)s::bool[])
            AS v(req, run_id, kvm_id, at, resend)
    ), chk AS (
        SELECT r.req, r.run_id, r.kvm_id, r.at, r.resend, t.state,
               l.run_id AS lock_run, l.pid AS lock_pid, l.hostname AS lock_host,
               (r.resend AND t.resent_at IS NOT NULL) AS resent
        FROM req r
        LEFT JOIN targets t ON t.run_id = r.run_id AND t.kvm_id = r.kvm_id
        LEFT JOIN locks l ON l.kvm_id = r.kvm_id
    ), bad AS (
        SELECT * FROM chk
        WHERE state IS NULL OR state NOT IN ({_INTENT_FROM}) OR lock_run IS NULL
           OR lock_run <> run_id OR lock_pid <> %(pid)s OR lock_host <> %(host)s OR resent
    ), written AS (
        UPDATE targets t SET state = 'intent', sent_at = c.at, sends = t.sends + 1, reason = '',
            resent_at = CASE WHEN c.resend THEN c.at ELSE t.resent_at END
        FROM chk c
        WHERE t.run_id = c.run_id AND t.kvm_id = c.kvm_id
          AND c.req NOT IN (SELECT req FROM bad)
    )
    SELECT req, kvm_id, state, lock_run, lock_pid, lock_host, resent FROM bad
    ORDER BY req, kvm_id
"""  # noqa: S608 - built from our own enums, never from input
# The in-doubt policy decided to resend (as ``store._DECIDE_RESEND``), for a whole batch.
_RESENDS_SQL = """
    UPDATE targets t SET resend_decided_at = v.at
    FROM unnest(%s::float8[], %s::text[], %s::text[]) AS v(at, run_id, kvm_id)
    WHERE t.run_id = v.run_id AND t.kvm_id = v.kvm_id
      AND t.resend_decided_at IS NULL AND t.resent_at IS NULL
"""


Round = list[tuple[str, str, TargetState, str, float]]


@dataclass
class Queued:
    """A batch sent (in pipeline mode) whose answers are read once the transaction ended."""

    rounds: list[tuple[psycopg.Cursor[Any], Round]] = field(default_factory=list)
    intents: psycopg.Cursor[Any] | None = None
    requests: dict[int, IntentRequest] = field(default_factory=dict)
    refused: dict[IntentRequest, str] = field(default_factory=dict)

    def finish(
        self, conn: psycopg.Connection[Any], ignored: list[tuple[str, str, TargetState, str | None]]
    ) -> dict[IntentRequest, str]:
        """Read the answers: return the refused intent requests with the reason, and append
        the outcomes that did not fit to ``ignored``."""
        if self.intents is not None:
            problems: dict[int, list[str]] = {}
            with self.intents as cur:
                for req, *row in cur.fetchall():
                    problems.setdefault(req, []).append(_problem(self.requests[req].run_id, row))
            for req, why in problems.items():
                self.refused[self.requests[req]] = "; ".join(why)
        misfits: list[tuple[str, str, TargetState]] = []
        for cur, round_ in self.rounds:
            with cur:
                applied = {(r, k) for r, k in cur.fetchall()}
            misfits += [(r, k, st) for r, k, st, _, _ in round_ if (r, k) not in applied]
        for run_id, kvm_id, state in misfits:  # a bug upstream: rare, and only logged
            row = conn.execute(
                "SELECT state FROM targets WHERE run_id = %s AND kvm_id = %s", (run_id, kvm_id)
            ).fetchone()
            note_misfit(ignored, run_id, kvm_id, state, None if row is None else str(row[0]))
        return self.refused


def _problem(run_id: str, row: Sequence[Any]) -> str:
    """Why an intent of ``run_id`` may not be written, from a row ``(kvm_id, state, lock's
    run, pid, host, resent already)`` of ``_INTENTS_SQL`` (in the SQLite store's words)."""
    kvm_id, state, run, pid, host, resent = row
    # The statement returned the row as a problem: the lock is not this process's.
    return intent_problem(
        run_id, kvm_id, state, resent=bool(resent), lock=(run, pid, host), held=False
    )


def queue(conn: psycopg.Connection[Any], batch: Batch, *, pid: int, hostname: str) -> Queued:
    """Send ``batch`` inside the caller's transaction on ``conn`` (in pipeline mode): outcomes,
    attempts, progress, then the intents of ``pid`` on ``hostname``. Nothing is read here, so
    the whole batch and its commit cost one round trip; ``Queued.finish`` reads the answers
    after the commit."""
    queued = Queued()
    # Outcomes go in rounds with each VPS at most once per round, in the order given, so a
    # VPS's later outcome sees its earlier one (``pending`` then ``failed``, say).
    rounds: list[Round] = []
    seen: dict[tuple[str, str], int] = {}
    for outcome in batch.outcomes:
        key = (outcome[0], outcome[1])
        n = seen[key] = seen.get(key, -1) + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(outcome)
    for round_ in rounds:
        rows = [(r, k, st.value, why, float(at)) for r, k, st, why, at in round_]
        cur = _send(conn, _OUTCOMES_SQL, [list(c) for c in zip(*rows, strict=True)])
        queued.rounds.append((cur, round_))
    if batch.attempts:
        # Arrays must hold one type each: a time may come in as an int.
        attempts = [
            (r, k, float(at), e, o, None if st is None else int(st), m, float(sec))
            for r, k, at, e, o, st, m, sec in batch.attempts
        ]
        conn.execute(_ATTEMPTS_SQL, [list(c) for c in zip(*attempts, strict=True)])
    for run_id, fields in batch.progress.items():
        sets = "".join(f"{c} = %({c})s, " for c in progress_columns(fields))
        conn.execute(
            f"UPDATE runs SET {sets}updated_at = %(updated_at)s WHERE id = %(run)s",  # noqa: S608
            {**fields, "run": run_id},
        )
    if batch.resends:
        resends = [(float(at), r, k) for at, r, k in batch.resends]
        conn.execute(_RESENDS_SQL, [list(c) for c in zip(*resends, strict=True)])
    for run_id, kvm_id, column, value in batch.facts:  # a few per VPS: one statement each
        if column in FACT_COLUMNS:
            conn.execute(
                f"UPDATE targets SET {column} = %s WHERE run_id = %s AND kvm_id = %s",  # noqa: S608
                (value, run_id, kvm_id),
            )
    if batch.intents:
        _queue_intents(conn, batch.intents, queued, pid=pid, hostname=hostname)
    return queued


def _queue_intents(
    conn: psycopg.Connection[Any],
    requests: Sequence[IntentRequest],
    queued: Queued,
    *,
    pid: int,
    hostname: str,
) -> None:
    """Send the intents of ``requests`` as one checked statement (``_INTENTS_SQL``)."""
    # A VPS claimed by an earlier request of this batch: refused here, as the earlier intent
    # makes its state ``intent`` (one statement cannot see its own writes).
    claimed: set[tuple[str, str]] = set()
    rows: list[tuple[int, str, str, float, bool]] = []
    for n, req in enumerate(requests):
        keys = {(req.run_id, k) for k in req.kvm_ids}
        if keys & claimed:
            twice = sorted(k for _, k in keys & claimed)
            queued.refused[req] = "; ".join(
                f"{k}: state is intent; another send could repeat it" for k in twice
            )
            continue
        claimed |= keys
        queued.requests[n] = req
        rows += [(n, req.run_id, k, float(req.at), req.resend) for k in req.kvm_ids]
    if not rows:
        return
    # Taken before the statement's snapshot: a takeover committed earlier is seen, a later
    # one waits for this transaction.
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (LOCKS_KEY,))
    columns = [list(c) for c in zip(*rows, strict=True)]
    queued.intents = _send(
        conn,
        _INTENTS_SQL,
        {"req": columns[0], "run": columns[1], "kvm": columns[2], "at": columns[3],
         "resend": columns[4], "pid": pid, "host": hostname},
    )  # fmt: skip


def _send(conn: psycopg.Connection[Any], sql: str, args: Any) -> psycopg.Cursor[Any]:
    """Send ``sql`` on a new cursor and return it, to be read after the commit. The cursor
    runs this one statement only: in pipeline mode a reused cursor may be read holding an
    earlier statement's answer (see the module's docstring)."""
    cur = conn.cursor()
    cur.execute(sql, args)
    return cur
