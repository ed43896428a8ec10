"""The journal's blocking half on PostgreSQL: one connection, one transaction per call.

The same contract as ``store.Store`` (the SQLite one) — ``journal.Journal`` calls either from
its worker thread, one call at a time — for a database that runners on several machines
share. psycopg is used only by the ``pg_*`` modules of this package, and ``journal.py``
imports this one only when a PostgreSQL journal is opened, so the cli starts without it.

What differs from SQLite, and why:

- SQLite serialises every writer of the file (``BEGIN IMMEDIATE``); PostgreSQL does not, so
  the rules that need serialising say so explicitly. Taking locks runs under one
  transaction-scoped advisory lock (``pg_schema.LOCKS_KEY``): two runs deciding at the same
  moment whether a VPS is free take turns, and the second sees the first one's rows. An
  intent's transaction holds the same advisory lock *shared* while it checks the VPS's lock
  row and writes the intent: the intent is written only if this process holds the lock in
  that same transaction, and a takeover waits for the intent to commit (or the intent sees
  the new holder and is refused). A shared advisory lock lives in memory; row locks
  (``FOR SHARE``) would write every locked row — measured, they doubled a batch's cost.
- A batch costs a handful of statements whatever its size (``pg_batch.py``).
- Errors are ``JournalError`` with the URL's password replaced by ``***``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from orchestrator.errors import JournalError
from orchestrator.journal import pg_batch, pg_locks
from orchestrator.journal.batch import Batch, IntentRequest
from orchestrator.journal.pg_schema import migrate
from orchestrator.journal.records import (
    AttemptRecord,
    LockRecord,
    LockTakeover,
    RunRecord,
    RunStatus,
    TargetRecord,
    attempt_from_row,
    run_from_row,
    target_from_row,
)
from orchestrator.journal.store_rules import attempts_query, draw_run_id, status_update
from orchestrator.model import TargetState

T = TypeVar("T")


class PgStore:
    """A PostgreSQL journal and its one connection; each public method is one transaction.

    ``conninfo`` is the URL to connect with (it may hold the password: it is never shown);
    ``shown`` is the URL as it may be printed. Not thread-safe: the caller runs one method at
    a time. Raises ``JournalError`` from the constructor when the database cannot be reached,
    is not a journal or is newer than this code, and from every method on database errors
    (after a rollback).
    """

    def __init__(
        self,
        conninfo: str,
        *,
        shown: str,
        secrets: Sequence[str],
        pid: int,
        hostname: str,
        busy_timeout: float,
        stale_after: float,
    ) -> None:
        self.path = shown
        self.pid = pid
        self.hostname = hostname
        self.stale_after = stale_after
        self._secrets = [s for s in secrets if s]
        self.commits = 0
        self.ignored_outcomes: list[tuple[str, str, TargetState, str | None]] = []
        self._conninfo = conninfo
        self._busy_timeout = busy_timeout
        self._conn = self._connect()
        try:
            self.schema_version = migrate(self._conn)
        except psycopg.Error as exc:
            self._conn.close()
            raise JournalError(f"cannot migrate journal {shown}: {self._clean(exc)}") from None
        except BaseException:
            self._conn.close()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        """Open a connection (autocommit; transactions are explicit). Raises ``JournalError``."""
        ms = max(1, int(self._busy_timeout * 1000))
        try:
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=max(1, int(self._busy_timeout)),
                application_name="edis-fleet",
            )
            # A lock another runner holds (a row, the advisory lock) is waited for this long,
            # then the call fails: never hang a run on a stuck peer. Set here rather than with
            # ``options=``, which would replace the URL's own (a ``search_path``, say).
            conn.execute(f"SET lock_timeout = {ms}")
            conn.execute("SET idle_in_transaction_session_timeout = 60000")
        except psycopg.Error as exc:
            raise JournalError(f"cannot open journal {self.path}: {self._clean(exc)}") from None
        return conn

    def _live(self) -> psycopg.Connection[Any]:
        """The connection, opened anew when the last one broke (a database restart, a network
        blip): the call that met the broken connection failed — safely: an intent whose
        commit is unknown is not sent, and reads as in doubt later — and the next call
        reconnects instead of failing for the rest of the run."""
        if self._conn.broken or self._conn.closed:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = self._connect()
        return self._conn

    def _clean(self, exc: BaseException) -> str:
        """The error's text with any secret of the connection replaced by ``***``."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _tx(self, fn: Callable[[psycopg.Cursor[Any]], T], *, write: bool) -> T:
        """Run ``fn`` in one transaction; roll back and raise ``JournalError`` on failure.

        Never in pipeline mode: ``fn`` gets one cursor for all its statements, and in
        pipeline mode a cursor that ran two statements may be read before the second one's
        answer arrived (see ``pg_batch``). The batch, the one pipelined path, is
        ``write_batch``.
        """
        conn = self._live()
        try:
            with conn.transaction(), conn.cursor() as cur:
                result = fn(cur)
        except psycopg.Error as exc:
            raise JournalError(f"journal {self.path}: {self._clean(exc)}") from None
        if write:
            self.commits += 1
        return result

    def _dict_cursor(self) -> psycopg.Cursor[dict[str, Any]]:
        return self._conn.cursor(row_factory=dict_row)

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(psycopg.Error):
            self._conn.close()

    # ----------------------------------------------------------------- the batch

    def write_batch(self, batch: Batch) -> dict[IntentRequest, str]:
        """Commit ``batch`` in one transaction: outcomes, attempts, progress, then intents
        (``pg_batch``), in one round trip. Returns the refused intent requests with the
        reason; a refused request writes nothing."""
        conn = self._live()
        try:
            with conn.pipeline(), conn.transaction():
                queued = pg_batch.queue(conn, batch, pid=self.pid, hostname=self.hostname)
            self.commits += 1
            return queued.finish(conn, self.ignored_outcomes)
        except psycopg.Error as exc:
            raise JournalError(f"journal {self.path}: {self._clean(exc)}") from None

    # ----------------------------------------------------------------- runs and targets

    def create_run(
        self, manifest_path: str, manifest_sha256: str, plan_sha256: str, options: str, now: float
    ) -> str:
        """Insert a ``running`` run with a fresh id; return the id."""
        rest = (manifest_path, manifest_sha256, plan_sha256, options, self.pid, self.hostname, now)

        def tx(cur: psycopg.Cursor[Any]) -> str:
            def insert(run_id: str) -> bool:
                cur.execute(
                    "INSERT INTO runs (id, manifest_path, manifest_sha256, plan_sha256,"
                    " options_json, pid, hostname, started_at, updated_at, status)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'running')"
                    " ON CONFLICT (id) DO NOTHING",
                    (run_id, *rest, now),
                )
                return cur.rowcount == 1

            return draw_run_id(insert, now)

        return self._tx(tx, write=True)

    def add_targets(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert ``(run_id, kvm_id, wave, position, image, hostname, user_data_sha256,
        queued_at)`` rows; raise ``JournalError`` for an unknown run or a repeated VPS."""

        def tx(cur: psycopg.Cursor[Any]) -> None:
            cur.executemany(
                "INSERT INTO targets (run_id, kvm_id, wave, position, image, hostname,"
                " user_data_sha256, queued_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )

        try:
            self._tx(tx, write=True)
        except JournalError as exc:
            raise JournalError(f"cannot add targets: {exc}") from None

    def set_run_status(
        self, run_id: str, status: RunStatus, now: float, error: str = ""
    ) -> RunRecord:
        """Set a run's status and ``error`` (``running`` also takes it over for this process
        and clears the error); return it."""

        sql, args = status_update(
            run_id, status, now, error, pid=self.pid, hostname=self.hostname, mark="%s"
        )

        def tx(cur: psycopg.Cursor[Any]) -> RunRecord:
            cur.execute(sql, args)
            return self._run(run_id)

        return self._tx(tx, write=True)

    # ----------------------------------------------------------------- reading

    def _run(self, run_id: str) -> RunRecord:
        with self._dict_cursor() as cur:
            cur.execute("SELECT * FROM runs WHERE id = %s", (run_id,))
            row = cur.fetchone()
        if row is None:
            raise JournalError(f"no run {run_id} in the journal")
        return run_from_row(row)

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._dict_cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def runs(self) -> list[RunRecord]:
        """Every run, oldest first (ids sort by start time)."""
        sql = "SELECT * FROM runs ORDER BY id"
        return self._tx(lambda _: [run_from_row(r) for r in self._rows(sql)], write=False)

    def run(self, run_id: str) -> RunRecord:
        """One run; ``JournalError`` when there is none."""
        return self._tx(lambda _: self._run(run_id), write=False)

    def targets(self, run_id: str) -> list[TargetRecord]:
        """The run's targets in wave and position order."""
        sql = "SELECT * FROM targets WHERE run_id = %s ORDER BY wave, position, kvm_id"
        return self._tx(
            lambda _: [target_from_row(r) for r in self._rows(sql, (run_id,))], write=False
        )

    def attempts(self, run_id: str, kvm_id: str | None) -> list[AttemptRecord]:
        """The run's attempts (only ``kvm_id``'s when given), oldest first."""
        sql, args = attempts_query(run_id, kvm_id, mark="%s")
        return self._tx(
            lambda _: [attempt_from_row(r) for r in self._rows(sql, args)],
            write=False,
        )

    def locks(self) -> list[LockRecord]:
        """Every lock row, by kvm id."""
        return self._tx(pg_locks.read_locks, write=False)

    def lock_takeovers(self, run_id: str) -> list[LockTakeover]:
        """The stale locks run ``run_id`` took over, oldest first."""
        return self._tx(lambda c: pg_locks.read_takeovers(c, run_id), write=False)

    # ----------------------------------------------------------------- locks

    def acquire_locks(self, run_id: str, kvm_ids: Sequence[str], now: float) -> list[LockTakeover]:
        """Take all of ``kvm_ids`` for this run and process, or none (``LockedError``); see
        ``pg_locks.acquire``. Raises ``JournalError`` for an unknown run."""

        def tx(cur: psycopg.Cursor[Any]) -> list[LockTakeover]:
            self._run(run_id)
            return pg_locks.acquire(
                cur,
                run_id,
                kvm_ids,
                now,
                pid=self.pid,
                hostname=self.hostname,
                stale_after=self.stale_after,
            )

        return self._tx(tx, write=True)

    def heartbeat(self, run_id: str, expected: set[str], now: float) -> dict[str, list[str]]:
        """Refresh this process's locks of ``run_id`` and the run's ``updated_at``; return which
        of ``expected`` are no longer ours, grouped by their holder now."""

        def tx(cur: psycopg.Cursor[Any]) -> dict[str, list[str]]:
            lost = pg_locks.heartbeat(
                cur, run_id, expected, now, pid=self.pid, hostname=self.hostname
            )
            cur.execute("UPDATE runs SET updated_at = %s WHERE id = %s", (now, run_id))
            return lost

        return self._tx(tx, write=True)

    def release_locks(self, run_id: str) -> int:
        """Delete this process's locks of ``run_id``; return how many there were."""
        return self._tx(
            lambda c: pg_locks.release(c, run_id, pid=self.pid, hostname=self.hostname),
            write=True,
        )
