"""Per-VPS locks in a PostgreSQL journal: the rules of ``locks.py``, shared by many hosts.

A lock row names the run, process (pid) and host that may send to a VPS, with a heartbeat
lease. Locks are taken all or none under one transaction-scoped advisory lock, so two runners
deciding at the same time take turns (PostgreSQL does not serialise writers the way SQLite
does). Another process's lock is stale when its pid no longer runs on *this* host (the only
host where a pid can be checked) or its heartbeat is older than ``stale_after`` (its runner
died or lost the database, wherever it ran); a stale lock is taken over and the takeover
recorded in ``lock_takeovers``. Each function is the body of one transaction of
``pg_store.PgStore``: nothing here begins, commits or rolls back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.journal.locks import (
    INSERT_TAKEOVER,
    UPSERT_LOCK,
    judge_found,
    lock_rows,
    takeover_rows,
)
from orchestrator.journal.pg_schema import LOCKS_KEY
from orchestrator.journal.records import LockRecord, LockTakeover

if TYPE_CHECKING:
    import psycopg

_COLS = ("kvm_id", "run_id", "pid", "hostname", "acquired_at", "heartbeat_at")
# ``locks.py``'s statements with psycopg's parameter marks.
_UPSERT_LOCK = UPSERT_LOCK.replace("?", "%s")
_INSERT_TAKEOVER = INSERT_TAKEOVER.replace("?", "%s")


def acquire(
    cur: psycopg.Cursor[Any],
    run_id: str,
    kvm_ids: Sequence[str],
    now: float,
    *,
    pid: int,
    hostname: str,
    stale_after: float,
) -> list[LockTakeover]:
    """Take all of ``kvm_ids`` for ``run_id`` in process ``pid`` on ``hostname``, or none.

    Locks this process already holds for the run are refreshed; stale locks of others are
    taken over, recorded and returned. Raises ``LockedError`` naming the holding run(s), their
    host, pid and when their lease lapses, when another live process holds any of them
    (nothing is written then).
    """
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCKS_KEY,))
    cur.execute(
        f"SELECT {', '.join(_COLS)} FROM locks WHERE kvm_id = ANY(%s) ORDER BY kvm_id"  # noqa: S608
        " FOR UPDATE",
        (list(kvm_ids),),
    )
    found = [dict(zip(_COLS, r, strict=True)) for r in cur.fetchall()]
    takeovers = judge_found(
        found, run_id, now, pid=pid, hostname=hostname, stale_after=stale_after, lease=True
    )
    cur.executemany(_UPSERT_LOCK, lock_rows(run_id, kvm_ids, now, pid=pid, hostname=hostname))
    if takeovers:
        cur.executemany(_INSERT_TAKEOVER, takeover_rows(run_id, takeovers, now))
    return takeovers


def heartbeat(
    cur: psycopg.Cursor[Any],
    run_id: str,
    expected: set[str],
    now: float,
    *,
    pid: int,
    hostname: str,
) -> dict[str, list[str]]:
    """Refresh the heartbeat of the locks ``run_id`` holds in process ``pid`` on ``hostname``;
    return which of ``expected`` are no longer held, grouped by their holder now
    (``(nobody)`` when released)."""
    cur.execute(
        "UPDATE locks SET heartbeat_at = %s WHERE run_id = %s AND pid = %s AND hostname = %s"
        " RETURNING kvm_id",
        (now, run_id, pid, hostname),
    )
    held = {r[0] for r in cur.fetchall()}
    missing = sorted(expected - held)
    lost: dict[str, list[str]] = {}
    if missing:
        cur.execute("SELECT kvm_id, run_id FROM locks WHERE kvm_id = ANY(%s)", (missing,))
        now_held = dict(cur.fetchall())
        for kvm_id in missing:
            lost.setdefault(now_held.get(kvm_id, "(nobody)"), []).append(kvm_id)
    return lost


def release(cur: psycopg.Cursor[Any], run_id: str, *, pid: int, hostname: str) -> int:
    """Delete the locks ``run_id`` holds in process ``pid`` on ``hostname``; return how many."""
    cur.execute(
        "DELETE FROM locks WHERE run_id = %s AND pid = %s AND hostname = %s",
        (run_id, pid, hostname),
    )
    return cur.rowcount


def read_locks(cur: psycopg.Cursor[Any]) -> list[LockRecord]:
    """Every lock row, by kvm id."""
    cur.execute(f"SELECT {', '.join(_COLS)} FROM locks ORDER BY kvm_id")  # noqa: S608
    return [LockRecord(*r) for r in cur.fetchall()]


def read_takeovers(cur: psycopg.Cursor[Any], run_id: str) -> list[LockTakeover]:
    """The stale locks run ``run_id`` took over, oldest first."""
    cur.execute(
        "SELECT kvm_id, previous_run_id, previous_pid, previous_hostname,"
        " previous_heartbeat_at, why FROM lock_takeovers WHERE run_id = %s ORDER BY id",
        (run_id,),
    )
    return [LockTakeover(*r) for r in cur.fetchall()]
