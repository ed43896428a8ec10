"""What both journal stores (``store.Store``, SQLite; ``pg_store.PgStore``, PostgreSQL) decide
the same way: drawing a free run id, the statement that sets a run's status, and the query of
a run's attempts. The statements are written once, with the parameter mark of the caller's
driver (``?`` for sqlite3, ``%s`` for psycopg); their text is ours, never input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from orchestrator.errors import JournalError
from orchestrator.journal.batch import new_run_id
from orchestrator.journal.records import RunStatus

# Ids are random within a minute: a clash is rare, twenty in a row means something is wrong.
_DRAWS = 20

#: A driver's parameter mark: ``?`` (sqlite3) or ``%s`` (psycopg).
Mark = Literal["?", "%s"]

_ATTEMPT_COLUMNS = "run_id, kvm_id, at, endpoint, outcome, http_status, message, seconds"


def draw_run_id(insert: Callable[[str], bool], now: float) -> str:
    """Draw run ids for ``now`` until ``insert`` (which inserts the run under the id, in the
    caller's transaction) says it took one; return that id. Raises ``JournalError`` when none
    of a few draws is free."""
    for _ in range(_DRAWS):
        run_id = new_run_id(now)
        if insert(run_id):
            return run_id
    raise JournalError("could not draw a free run id")


def status_update(
    run_id: str,
    status: RunStatus,
    now: float,
    error: str,
    *,
    pid: int,
    hostname: str,
    mark: Mark,
) -> tuple[str, tuple[Any, ...]]:
    """The statement and its arguments that set run ``run_id``'s status and ``error``:
    ``running`` also takes the run over for process ``pid`` on ``hostname`` and clears the
    error and the end time; any other status ends the run at ``now``."""
    if status is RunStatus.RUNNING:
        sql = (
            "UPDATE runs SET status = 'running', ended_at = NULL, pid = ?, hostname = ?,"
            " updated_at = ?, error = '' WHERE id = ?"
        )
        return sql.replace("?", mark), (pid, hostname, now, run_id)
    sql = "UPDATE runs SET status = ?, ended_at = ?, updated_at = ?, error = ? WHERE id = ?"
    return sql.replace("?", mark), (status.value, now, now, error, run_id)


def attempts_query(run_id: str, kvm_id: str | None, *, mark: Mark) -> tuple[str, tuple[str, ...]]:
    """The query and its arguments for run ``run_id``'s attempts (only ``kvm_id``'s when
    given), oldest first, in the column order of ``records.attempt_from_row``."""
    args: tuple[str, ...] = (run_id,) if kvm_id is None else (run_id, kvm_id)
    where = "" if kvm_id is None else " AND kvm_id = ?"
    sql = f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE run_id = ?{where} ORDER BY id"  # noqa: S608
    return sql.replace("?", mark), args
