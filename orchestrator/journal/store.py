"""The journal's blocking half: one SQLite connection, one transaction per call.

``journal.Journal`` is the async API (group commit, worker thread, validation); it calls this
``Store`` from a worker thread, one call at a time. Nothing here awaits, and nothing outside
``Store`` touches ``sqlite3`` except the lock functions of ``journal_locks``, which ``Store``
runs inside its own transactions. The schema is in ``journal_schema``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from orchestrator.errors import JournalError
from orchestrator.journal import locks as journal_locks
from orchestrator.journal.records import (
    AttemptRecord,
    LockRecord,
    LockTakeover,
    RunRecord,
    RunStatus,
    TargetRecord,
    attempt_from_row,
    known_value,
    run_from_row,
    target_from_row,
)
from orchestrator.journal.schema import INTENT_FROM, OUTCOME_FROM, migrate, sql_list
from orchestrator.model import TargetState

_log = logging.getLogger("orchestrator.journal.journal")
T = TypeVar("T")
RESENT_ONCE = "already resent once in this run; never resent twice"

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
_PROGRESS_COLUMNS = frozenset(
    {"wave_position", "failures", "retries", "counters_json", "waves_json"}
)
# The in-doubt policy decided to resend (schema version 2): once, and never after the resend.
_DECIDE_RESEND = (
    "UPDATE targets SET resend_decided_at = ? WHERE run_id = ? AND kvm_id = ?"
    " AND resend_decided_at IS NULL AND resent_at IS NULL"
)


# The target columns a fact may set (schema version 3): never built from input.
FACT_COLUMNS = frozenset({"presend_key", "proof", "known_hosts"})


@dataclass(eq=False)
class IntentRequest:
    """One ``write_intents`` call waiting in a batch (compared and hashed by identity)."""

    run_id: str
    kvm_ids: tuple[str, ...]
    at: float
    # The in-doubt resend after the install window: refused when the VPS was already resent
    # in this run, and recorded (``resent_at``) so no later process resends it again.
    resend: bool = False


@dataclass
class Batch:
    """Writes not yet committed, in the order they were asked for."""

    intents: list[IntentRequest] = field(default_factory=list)
    # (run_id, kvm_id, state, reason, at)
    outcomes: list[tuple[str, str, TargetState, str, float]] = field(default_factory=list)
    # (run_id, kvm_id, at, endpoint, outcome, http_status, message, seconds)
    attempts: list[tuple[str, str | None, float, str, str, int | None, str, float]] = field(
        default_factory=list
    )
    # run_id -> {column: value}; the latest value of a column wins.
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (at, run_id, kvm_id): resends decided by the in-doubt policy, written after the outcomes.
    resends: list[tuple[float, str, str]] = field(default_factory=list)
    # (run_id, kvm_id, column, value): facts about a VPS (schema version 3, ``FACT_COLUMNS``),
    # written before the intents, so a pre-send host key is as durable as its intent.
    facts: list[tuple[str, str, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.intents) + len(self.outcomes) + len(self.attempts) + len(self.progress)
            + len(self.resends) + len(self.facts)
        )  # fmt: skip

    def take_back(self, failed: Batch) -> None:
        """Put the rows of a ``failed`` batch (all but its intents) before this one's."""
        self.outcomes[:0] = failed.outcomes
        self.attempts[:0] = failed.attempts
        self.resends[:0] = failed.resends
        self.facts[:0] = failed.facts
        for run_id, fields in failed.progress.items():
            self.progress[run_id] = {**fields, **self.progress.get(run_id, {})}


def state_problem(run_id: str, kvm_id: str, state: Any) -> str:
    """Why an intent may not follow ``state`` (a target's state as read from the journal), or
    ``""`` when it may.

    A state this version does not know (a journal written by a newer version, or edited by
    hand) refuses the intent with the row reader's ``JournalError`` text: whether a send could
    repeat one is not guessed. A refusal, not a raise: the rest of the batch commits (the
    caller of ``write_intents`` gets the ``JournalError``).
    """
    try:
        known = known_value(TargetState, state, f"state in run {run_id}")
    except JournalError as exc:
        return f"{kvm_id}: {exc}"
    if known not in INTENT_FROM:
        return f"{kvm_id}: state is {known.value}; another send could repeat it"
    return ""


def new_run_id(now: float) -> str:
    """Return a run id like ``20261127-2315-ab12cd``: UTC minute, then 6 random hex digits."""
    return time.strftime("%Y%m%d-%H%M", time.gmtime(now)) + "-" + secrets.token_hex(3)


def prepare_file(path: Path) -> bool:
    """Create the journal's directory (0700) and file (0600) if missing; return if created.

    SQLite's unix VFS gives the ``-wal`` and ``-shm`` files the mode of the database file, so
    creating the database file 0600 first covers them without changing the process-wide umask
    (which every other thread would see meanwhile). Raises ``OSError``.
    """
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask
    try:
        # O_EXCL also refuses a symlink planted where the journal should be.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return True


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with WAL, full sync, foreign keys and a busy timeout.

    Raises ``JournalError`` (or ``sqlite3.Error``/``OSError``) when that is not possible.
    """
    created = prepare_file(path)
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(f"journal {path}: cannot use WAL mode (got {mode!r})")
        # FULL: a commit is on disk when COMMIT returns. Durability is the point.
        conn.execute("PRAGMA synchronous = FULL")
        # Foreign keys are switched on by ``Store`` once the schema is migrated: a migration
        # that rebuilds a table (version 2) must drop the old one, which they would refuse.
        if created:
            for side in (Path(f"{path}-wal"), Path(f"{path}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(side, 0o600)
    except BaseException:
        conn.close()
        raise
    return conn


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
        return self._tx(lambda conn: self._write_batch(conn, batch), write=True)

    def _write_batch(self, conn: sqlite3.Connection, batch: Batch) -> dict[IntentRequest, str]:
        for run_id, kvm_id, state, reason, at in batch.outcomes:
            args = {"run": run_id, "kvm": kvm_id, "reason": reason, "at": at}
            if conn.execute(_OUTCOME_SQL[state], args).rowcount == 0:
                row = conn.execute(
                    "SELECT state FROM targets WHERE run_id = ? AND kvm_id = ?", (run_id, kvm_id)
                ).fetchone()
                found = None if row is None else str(row[0])
                self.ignored_outcomes.append((run_id, kvm_id, state, found))
                _log.warning(
                    "journal: outcome %s for %s not applied (state %s)", state, kvm_id, found
                )
        conn.executemany(_INSERT_ATTEMPT, batch.attempts)
        for run_id, fields in batch.progress.items():
            cols = [c for c in fields if c in _PROGRESS_COLUMNS]
            sets = "".join(f"{c} = :{c}, " for c in cols)
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
            problem = self._intent_problem(conn, req)
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

    def _intent_problem(self, conn: sqlite3.Connection, req: IntentRequest) -> str:
        """Return why ``req`` may not be written (all of it or none), or ``""``."""
        problems: list[str] = []
        for kvm_id in req.kvm_ids:
            row = conn.execute(
                "SELECT t.state, l.run_id, l.pid, l.hostname, t.resent_at FROM targets t"
                " LEFT JOIN locks l ON l.kvm_id = t.kvm_id WHERE t.run_id = ? AND t.kvm_id = ?",
                (req.run_id, kvm_id),
            ).fetchone()
            if row is None:
                problems.append(f"{kvm_id}: not a target of run {req.run_id}")
            elif req.resend and row[4] is not None:
                problems.append(f"{kvm_id}: {RESENT_ONCE}")
            elif bad_state := state_problem(req.run_id, kvm_id, row[0]):
                problems.append(bad_state)
            elif (row[1], row[2], row[3]) != (req.run_id, self.pid, self.hostname):
                holder = "nobody" if row[1] is None else f"run {row[1]} (pid {row[2]} on {row[3]})"
                problems.append(f"{kvm_id}: locked by {holder}, not by this process")
        return "; ".join(problems)

    # ----------------------------------------------------------------- runs and targets

    def create_run(
        self, manifest_path: str, manifest_sha256: str, plan_sha256: str, options: str, now: float
    ) -> str:
        """Insert a ``running`` run with a fresh id; return the id."""

        rest = (manifest_path, manifest_sha256, plan_sha256, options, self.pid, self.hostname, now)

        def tx(conn: sqlite3.Connection) -> str:
            for _ in range(20):
                run_id = new_run_id(now)
                with contextlib.suppress(sqlite3.IntegrityError):  # id taken: draw another
                    conn.execute(
                        "INSERT INTO runs (id, manifest_path, manifest_sha256, plan_sha256,"
                        " options_json, pid, hostname, started_at, updated_at, status)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                        (run_id, *rest, now),
                    )
                    return run_id
            raise JournalError("could not draw a free run id")

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

        def tx(conn: sqlite3.Connection) -> RunRecord:
            if status is RunStatus.RUNNING:
                conn.execute(
                    "UPDATE runs SET status = 'running', ended_at = NULL, pid = ?, hostname = ?,"
                    " updated_at = ?, error = '' WHERE id = ?",
                    (self.pid, self.hostname, now, run_id),
                )
            else:
                conn.execute(
                    "UPDATE runs SET status = ?, ended_at = ?, updated_at = ?, error = ?"
                    " WHERE id = ?",
                    (status.value, now, now, error, run_id),
                )
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
        cols = "run_id, kvm_id, at, endpoint, outcome, http_status, message, seconds"
        args: tuple[str, ...] = (run_id,) if kvm_id is None else (run_id, kvm_id)
        where = "" if kvm_id is None else " AND kvm_id = ?"
        sql = f"SELECT {cols} FROM attempts WHERE run_id = ?{where} ORDER BY id"  # noqa: S608
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
