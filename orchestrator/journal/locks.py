"""Per-VPS locks in the journal file: taking them, heartbeats, release, and reading them back.

A lock row names the run, process (pid) and host that may send to a VPS. Locks are taken all
or none; another process's lock is stale when its pid no longer runs on this host or its
heartbeat is older than ``stale_after``, and a stale lock is taken over, with the takeover
recorded in ``lock_takeovers``. Each function here is the body of one transaction on the
connection ``store.Store`` opened: nothing here begins, commits or rolls back, and
nothing here awaits. The tables are described in ``schema.py``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from orchestrator.errors import LockedError
from orchestrator.journal.records import LockRecord, LockTakeover

# Stay below SQLite's smallest default limit on bound parameters (999 before 3.32).
_CHUNK = 500

# The statements of taking locks, shared with ``pg_locks.py`` (which swaps the ``?`` marks
# for psycopg's): a lock this process already holds keeps its ``acquired_at``.
UPSERT_LOCK = """
    INSERT INTO locks (kvm_id, run_id, pid, hostname, acquired_at, heartbeat_at)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (kvm_id) DO UPDATE SET
        acquired_at = CASE WHEN locks.run_id = excluded.run_id AND locks.pid = excluded.pid
                            AND locks.hostname = excluded.hostname
                           THEN locks.acquired_at ELSE excluded.acquired_at END,
        run_id = excluded.run_id, pid = excluded.pid, hostname = excluded.hostname,
        heartbeat_at = excluded.heartbeat_at
"""
INSERT_TAKEOVER = """
    INSERT INTO lock_takeovers (at, kvm_id, run_id, previous_run_id, previous_pid,
                                previous_hostname, previous_heartbeat_at, why)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""


def pid_alive(pid: int) -> bool:
    """Return whether a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def stale_reason(
    row: sqlite3.Row | Mapping[str, Any], now: float, *, hostname: str, stale_after: float
) -> str:
    """Return why another process's lock ``row`` is stale, or ``""`` if it is live.

    ``hostname`` is this process's host: only there can a pid be looked up.
    """
    if row["hostname"] == hostname and not pid_alive(row["pid"]):
        return f"pid {row['pid']} no longer runs on {row['hostname']}"
    age = now - row["heartbeat_at"]
    if age > stale_after:
        return f"no heartbeat for {age:.0f} s"
    return ""


def judge_found(
    found: Iterable[sqlite3.Row | Mapping[str, Any]],
    run_id: str,
    now: float,
    *,
    pid: int,
    hostname: str,
    stale_after: float,
    lease: bool = False,
) -> list[LockTakeover]:
    """Judge the lock rows ``found`` for the VPSes ``run_id`` wants to take; return takeovers.

    Rows this process already holds for the run are skipped; stale rows of others become
    ``LockTakeover`` records. Raises ``LockedError`` naming the holding run(s) and VPSes, with
    each holder's pid, host and heartbeat age (and, with ``lease``, when its lease lapses),
    when another live process holds any of them. Reads and writes nothing.
    """
    conflicts: dict[str, list[str]] = {}
    where: dict[str, str] = {}
    takeovers: list[LockTakeover] = []
    for row in found:
        if (row["run_id"], row["pid"], row["hostname"]) == (run_id, pid, hostname):
            continue
        why = stale_reason(row, now, hostname=hostname, stale_after=stale_after)
        if why:
            takeovers.append(
                LockTakeover(
                    row["kvm_id"], row["run_id"], row["pid"], row["hostname"],
                    row["heartbeat_at"], why,
                )
            )  # fmt: skip
            continue
        conflicts.setdefault(row["run_id"], []).append(row["kvm_id"])
        age = max(0.0, now - row["heartbeat_at"])
        where[row["run_id"]] = f"pid {row['pid']} on {row['hostname']}, heartbeat {age:.0f} s ago"
        if lease:
            where[row["run_id"]] += (
                f"; its lease lapses {max(0.0, stale_after - age):.0f} s after its last heartbeat"
            )
    if conflicts:
        raise LockedError(conflicts, detail=" (" + "; ".join(where.values()) + ")")
    return takeovers


def lock_rows(
    run_id: str, kvm_ids: Sequence[str], now: float, *, pid: int, hostname: str
) -> list[tuple[Any, ...]]:
    """The ``UPSERT_LOCK`` rows that give ``kvm_ids`` to ``run_id`` in process ``pid`` on
    ``hostname`` at ``now``."""
    return [(k, run_id, pid, hostname, now, now) for k in kvm_ids]


def takeover_rows(
    run_id: str, takeovers: Sequence[LockTakeover], now: float
) -> list[tuple[Any, ...]]:
    """The ``INSERT_TAKEOVER`` rows recording that ``run_id`` took over ``takeovers`` at ``now``."""
    return [
        (now, t.kvm_id, run_id, t.previous_run_id, t.previous_pid,
         t.previous_hostname, t.previous_heartbeat_at, t.why)
        for t in takeovers
    ]  # fmt: skip


def acquire(
    conn: sqlite3.Connection,
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
    taken over, recorded and returned. Raises ``LockedError`` naming the holding run(s) and
    VPSes when another live process holds any of them (nothing is written then).
    """
    found: list[sqlite3.Row] = []
    for chunk in _chunks(kvm_ids):
        marks = ", ".join("?" * len(chunk))
        found += conn.execute(f"SELECT * FROM locks WHERE kvm_id IN ({marks})", chunk)  # noqa: S608
    takeovers = judge_found(found, run_id, now, pid=pid, hostname=hostname, stale_after=stale_after)
    conn.executemany(UPSERT_LOCK, lock_rows(run_id, kvm_ids, now, pid=pid, hostname=hostname))
    conn.executemany(INSERT_TAKEOVER, takeover_rows(run_id, takeovers, now))
    return takeovers


def heartbeat(
    conn: sqlite3.Connection,
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
    me = (run_id, pid, hostname)
    conn.execute(
        "UPDATE locks SET heartbeat_at = ? WHERE run_id = ? AND pid = ? AND hostname = ?",
        (now, *me),
    )
    mine = "SELECT kvm_id FROM locks WHERE run_id = ? AND pid = ? AND hostname = ?"
    held = {r[0] for r in conn.execute(mine, me)}
    lost: dict[str, list[str]] = {}
    for kvm_id in sorted(expected - held):
        row = conn.execute("SELECT run_id FROM locks WHERE kvm_id = ?", (kvm_id,)).fetchone()
        lost.setdefault("(nobody)" if row is None else row[0], []).append(kvm_id)
    return lost


def release(conn: sqlite3.Connection, run_id: str, *, pid: int, hostname: str) -> int:
    """Delete the locks ``run_id`` holds in process ``pid`` on ``hostname``; return how many."""
    sql = "DELETE FROM locks WHERE run_id = ? AND pid = ? AND hostname = ?"
    return conn.execute(sql, (run_id, pid, hostname)).rowcount


def read_locks(conn: sqlite3.Connection) -> list[LockRecord]:
    """Every lock row, by kvm id."""
    cols = "kvm_id, run_id, pid, hostname, acquired_at, heartbeat_at"
    sql = f"SELECT {cols} FROM locks ORDER BY kvm_id"  # noqa: S608
    return [LockRecord(*r) for r in conn.execute(sql)]


def read_takeovers(conn: sqlite3.Connection, run_id: str) -> list[LockTakeover]:
    """The stale locks run ``run_id`` took over, oldest first."""
    sql = (
        "SELECT kvm_id, previous_run_id, previous_pid, previous_hostname,"
        " previous_heartbeat_at, why FROM lock_takeovers WHERE run_id = ? ORDER BY id"
    )
    return [LockTakeover(*r) for r in conn.execute(sql, (run_id,))]
