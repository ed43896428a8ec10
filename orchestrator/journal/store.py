"""The SQLite journal's blocking half: one connection, one transaction per call.

``journal.Journal`` is the async API (group commit, worker thread, validation); it calls this
``Store`` from a worker thread, one call at a time. Nothing here awaits, and nothing outside
``Store`` touches ``sqlite3`` except the functions it runs inside its own transactions: the
batch writer of ``sqlite_batch.py`` and the lock functions of ``locks.py``. ``sqlite_conn.py``
opens the file; the schema is in ``schema.py``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from orchestrator.errors import JournalError
from orchestrator.journal import locks as journal_locks
from orchestrator.journal import sqlite_batch
from orchestrator.journal.batch import Batch, IntentRequest
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
from orchestrator.journal.schema import migrate
from orchestrator.journal.sqlite_conn import connect
from orchestrator.journal.store_rules import attempts_query, draw_run_id, status_update
from orchestrator.model import TargetState

T = TypeVar("T")


class Store:
    """The journal file and its one connection; each public method is one transaction.

    Not thread-safe: the caller runs one method at a time (from any thread). Raises
    ``JournalError`` from the constructor when the file cannot be opened, is not a journal or
    is newer than this code, and from every method on SQLite failures (after a rollback).
    """

    def __init__(
        self, path: Path, *, pid: int, hostname: str, busy_timeout: float, stale_after: float
    ) -> None:
        self.path = path
        self.pid = pid
        self.hostname = hostname
        self.stale_after = stale_after
        #: Write transactions committed through this store.
        self.commits = 0
        #: Outcomes that did not fit the target's state and were not applied:
        #: (run_id, kvm_id, wanted state, state found or None).
        self.ignored_outcomes: list[tuple[str, str, TargetState, str | None]] = []
        try:
            self._conn = connect(path, busy_timeout)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc
        try:
            self.schema_version = migrate(self._conn)
            self._conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            self._conn.close()
            raise JournalError(f"cannot migrate journal {path}: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    #: A fault to inject before every write transaction (tests: a full disk raises
    #: ``sqlite3.OperationalError("database or disk is full")`` here). None in production.
    write_fault: ClassVar[Callable[[], None] | None] = None

    def _tx(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``fn`` in one transaction; roll back and raise ``JournalError`` on failure."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            if write and Store.write_fault is not None:
                Store.write_fault()
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise JournalError(f"journal {self.path.name}: {exc}") from exc
            raise
        if write:
            self.commits += 1
        return result

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL when the last one closes)."""
        self._conn.close()

    # ----------------------------------------------------------------- the batch

    def write_batch(self, batch: Batch) -> dict[IntentRequest, str]:
        """Commit ``batch`` in one transaction: outcomes, attempts, progress, then intents.

        Returns the refused intent requests with the reason; a refused request writes nothing.
        """
        return self._tx(
            lambda conn: sqlite_batch.write(
                conn, batch, pid=self.pid, hostname=self.hostname, ignored=self.ignored_outcomes
            ),
            write=True,
        )

    # ----------------------------------------------------------------- runs and targets

    def create_run(
        self, manifest_path: str, manifest_sha256: str, plan_sha256: str, options: str, now: float
    ) -> str:
        """Insert a ``running`` run with a fresh id; return the id."""

        rest = (manifest_path, manifest_sha256, plan_sha256, options, self.pid, self.hostname, now)

        def tx(conn: sqlite3.Connection) -> str:
            def insert(run_id: str) -> bool:
                try:
                    conn.execute(
                        "INSERT INTO runs (id, manifest_path, manifest_sha256, plan_sha256,"
                        " options_json, pid, hostname, started_at, updated_at, status)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                        (run_id, *rest, now),
                    )
                except sqlite3.IntegrityError:  # id taken: draw another
                    return False
                return True

            return draw_run_id(insert, now)

        return self._tx(tx, write=True)

    def add_targets(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert ``(run_id, kvm_id, wave, position, image, hostname, user_data_sha256,
        queued_at)`` rows; raise ``JournalError`` for an unknown run or a repeated VPS."""

        def tx(conn: sqlite3.Connection) -> None:
            try:
                conn.executemany(
                    "INSERT INTO targets (run_id, kvm_id, wave, position, image, hostname,"
                    " user_data_sha256, queued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except sqlite3.IntegrityError as exc:
                raise JournalError(f"cannot add targets: {exc}") from exc

        self._tx(tx, write=True)

    def set_run_status(
        self, run_id: str, status: RunStatus, now: float, error: str = ""
    ) -> RunRecord:
        """Set a run's status and ``error`` (``running`` also takes it over for this process
        and clears the error); return it."""

        sql, args = status_update(
            run_id, status, now, error, pid=self.pid, hostname=self.hostname, mark="?"
        )

        def tx(conn: sqlite3.Connection) -> RunRecord:
            conn.execute(sql, args)
            return self._run(conn, run_id)

        return self._tx(tx, write=True)

    # ----------------------------------------------------------------- reading

    @staticmethod
    def _run(conn: sqlite3.Connection, run_id: str) -> RunRecord:
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise JournalError(f"no run {run_id} in the journal")
        return run_from_row(row)

    def runs(self) -> list[RunRecord]:
        """Every run, oldest first (ids sort by start time)."""
        sql = "SELECT * FROM runs ORDER BY id"
        return self._tx(lambda c: [run_from_row(r) for r in c.execute(sql)], write=False)

    def run(self, run_id: str) -> RunRecord:
        """One run; ``JournalError`` when there is none."""
        return self._tx(lambda c: self._run(c, run_id), write=False)

    def targets(self, run_id: str) -> list[TargetRecord]:
        """The run's targets in wave and position order."""
        sql = "SELECT * FROM targets WHERE run_id = ? ORDER BY wave, position, kvm_id"
        return self._tx(
            lambda c: [target_from_row(r) for r in c.execute(sql, (run_id,))], write=False
        )

    def attempts(self, run_id: str, kvm_id: str | None) -> list[AttemptRecord]:
        """The run's attempts (only ``kvm_id``'s when given), oldest first."""
        sql, args = attempts_query(run_id, kvm_id, mark="?")
        return self._tx(lambda c: [attempt_from_row(r) for r in c.execute(sql, args)], write=False)

    def locks(self) -> list[LockRecord]:
        """Every lock row, by kvm id."""
        return self._tx(journal_locks.read_locks, write=False)

    def lock_takeovers(self, run_id: str) -> list[LockTakeover]:
        """The stale locks run ``run_id`` took over, oldest first."""
        return self._tx(lambda c: journal_locks.read_takeovers(c, run_id), write=False)

    # ----------------------------------------------------------------- locks

    def acquire_locks(self, run_id: str, kvm_ids: Sequence[str], now: float) -> list[LockTakeover]:
        """Take all of ``kvm_ids`` for this run and process, or none (``LockedError``); see
        ``journal_locks.acquire``. Raises ``JournalError`` for an unknown run."""

        def tx(conn: sqlite3.Connection) -> list[LockTakeover]:
            self._run(conn, run_id)
            return journal_locks.acquire(
                conn,
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
        of ``expected`` are no longer ours, grouped by their holder now (``(nobody)`` when
        released)."""

        def tx(conn: sqlite3.Connection) -> dict[str, list[str]]:
            lost = journal_locks.heartbeat(
                conn, run_id, expected, now, pid=self.pid, hostname=self.hostname
            )
            conn.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (now, run_id))
            return lost

        return self._tx(tx, write=True)

    def release_locks(self, run_id: str) -> int:
        """Delete this process's locks of ``run_id``; return how many there were."""
        return self._tx(
            lambda c: journal_locks.release(c, run_id, pid=self.pid, hostname=self.hostname),
            write=True,
        )
