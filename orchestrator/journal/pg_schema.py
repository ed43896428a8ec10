"""The journal's schema in PostgreSQL, and its migrations.

The same tables, columns and meaning as the SQLite schema (``schema.py`` documents them),
in PostgreSQL types: times are ``DOUBLE PRECISION`` Unix seconds, row ids are identity
columns. Instead of SQLite's ``user_version`` and ``application_id``, the table
``edis_fleet_schema`` holds one row: the ``application`` (``edis-fleet``) and the ``version``.

``PG_MIGRATIONS[n]`` turns version ``n - 1`` into version ``n``; ``migrate`` runs the missing
steps in one transaction under an advisory lock, so runners that open a new database at the
same moment do not both create it. A database with a newer version than this code knows, or
with a ``runs`` table but no version row (someone else's tables), is refused and left as is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.errors import JournalError
from orchestrator.journal.records import RunStatus
from orchestrator.journal.schema import APPLICATION_ID, sql_list
from orchestrator.model import TargetState

if TYPE_CHECKING:
    import psycopg

APPLICATION = "edis-fleet"
# Advisory lock keys (one database-wide namespace): schema changes, and lock acquisition.
MIGRATE_KEY = APPLICATION_ID
LOCKS_KEY = APPLICATION_ID + 1


def _migrate_to_1(cur: psycopg.Cursor[Any]) -> None:
    """Create the first schema: runs, targets, attempts, locks, lock_takeovers."""
    cur.execute(f"""
        CREATE TABLE runs (
            id              TEXT PRIMARY KEY,
            manifest_path   TEXT NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            plan_sha256     TEXT NOT NULL,
            options_json    TEXT NOT NULL DEFAULT '{{}}',
            pid             BIGINT NOT NULL,
            hostname        TEXT NOT NULL,
            started_at      DOUBLE PRECISION NOT NULL,
            updated_at      DOUBLE PRECISION NOT NULL,
            ended_at        DOUBLE PRECISION,
            status          TEXT NOT NULL CHECK (status IN ({sql_list(RunStatus)})),
            wave_position   BIGINT NOT NULL DEFAULT 0,
            failures        BIGINT NOT NULL DEFAULT 0,
            retries         BIGINT NOT NULL DEFAULT 0,
            counters_json   TEXT NOT NULL DEFAULT '{{}}'
        )""")
    cur.execute(f"""
        CREATE TABLE targets (
            run_id           TEXT NOT NULL REFERENCES runs(id),
            kvm_id           TEXT NOT NULL,
            wave             BIGINT NOT NULL,
            position         BIGINT NOT NULL,
            image            TEXT NOT NULL,
            hostname         TEXT NOT NULL,
            user_data_sha256 TEXT,
            state            TEXT NOT NULL DEFAULT 'pending'
                             CHECK (state IN ({sql_list(TargetState)})),
            sends            BIGINT NOT NULL DEFAULT 0,
            queued_at        DOUBLE PRECISION NOT NULL,
            sent_at          DOUBLE PRECISION,
            accepted_at      DOUBLE PRECISION,
            ready_at         DOUBLE PRECISION,
            ended_at         DOUBLE PRECISION,
            reason           TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (run_id, kvm_id)
        )""")
    cur.execute("CREATE INDEX targets_by_state ON targets(run_id, state)")
    cur.execute("""
        CREATE TABLE attempts (
            id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id      TEXT NOT NULL REFERENCES runs(id),
            kvm_id      TEXT,
            at          DOUBLE PRECISION NOT NULL,
            endpoint    TEXT NOT NULL,
            outcome     TEXT NOT NULL,
            http_status INTEGER,
            message     TEXT NOT NULL DEFAULT '',
            seconds     DOUBLE PRECISION NOT NULL
        )""")
    cur.execute("CREATE INDEX attempts_by_target ON attempts(run_id, kvm_id)")
    cur.execute("""
        CREATE TABLE locks (
            kvm_id       TEXT PRIMARY KEY,
            run_id       TEXT NOT NULL REFERENCES runs(id),
            pid          BIGINT NOT NULL,
            hostname     TEXT NOT NULL,
            acquired_at  DOUBLE PRECISION NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL
        )""")
    cur.execute("CREATE INDEX locks_by_run ON locks(run_id)")
    cur.execute("""
        CREATE TABLE lock_takeovers (
            id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at                    DOUBLE PRECISION NOT NULL,
            kvm_id                TEXT NOT NULL,
            run_id                TEXT NOT NULL,
            previous_run_id       TEXT NOT NULL,
            previous_pid          BIGINT NOT NULL,
            previous_hostname     TEXT NOT NULL,
            previous_heartbeat_at DOUBLE PRECISION NOT NULL,
            why                   TEXT NOT NULL
        )""")


def _migrate_to_2(cur: psycopg.Cursor[Any]) -> None:
    """Version 2 (as ``schema._migrate_to_2``): the statuses ``rto_missed`` and ``crashed``,
    ``runs.error``, ``runs.waves_json``, ``targets.resend_decided_at`` and
    ``targets.resent_at``."""
    cur.execute("ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_status_check")
    cur.execute(
        f"ALTER TABLE runs ADD CONSTRAINT runs_status_check"  # our own enum, never input
        f" CHECK (status IN ({sql_list(RunStatus)}))"
    )
    cur.execute("ALTER TABLE runs ADD COLUMN error TEXT NOT NULL DEFAULT ''")
    cur.execute("ALTER TABLE runs ADD COLUMN waves_json TEXT NOT NULL DEFAULT '{}'")
    cur.execute("ALTER TABLE targets ADD COLUMN resend_decided_at DOUBLE PRECISION")
    cur.execute("ALTER TABLE targets ADD COLUMN resent_at DOUBLE PRECISION")


def _migrate_to_3(cur: psycopg.Cursor[Any]) -> None:
    """Version 3 (as ``schema._migrate_to_3``): the status ``busy``, ``targets.presend_key``,
    ``targets.proof`` and ``targets.known_hosts``."""
    cur.execute("ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_status_check")
    cur.execute(
        f"ALTER TABLE runs ADD CONSTRAINT runs_status_check"  # our own enum, never input
        f" CHECK (status IN ({sql_list(RunStatus)}))"
    )
    cur.execute("ALTER TABLE targets ADD COLUMN presend_key TEXT")
    cur.execute("ALTER TABLE targets ADD COLUMN proof TEXT NOT NULL DEFAULT ''")
    cur.execute("ALTER TABLE targets ADD COLUMN known_hosts TEXT NOT NULL DEFAULT ''")


PgMigration = Callable[["psycopg.Cursor[Any]"], None]

PG_MIGRATIONS: dict[int, PgMigration] = {
    1: _migrate_to_1,
    2: _migrate_to_2,
    3: _migrate_to_3,
}


def migrate(
    conn: psycopg.Connection[Any], migrations: Mapping[int, PgMigration] = PG_MIGRATIONS
) -> int:
    """Bring the database behind ``conn`` (autocommit mode) to the newest version in
    ``migrations``, in one transaction; return the version reached.

    Raises ``JournalError`` when the database is newer than ``migrations`` know, holds someone
    else's ``runs`` table, or when the steps have a gap; nothing is changed then.
    """
    target = max(migrations, default=0)
    missing = [v for v in range(1, target + 1) if v not in migrations]
    if missing:
        raise JournalError(f"journal migrations have a gap: no step to version {missing[0]}")
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_KEY,))
        cur.execute("SELECT to_regclass('edis_fleet_schema') IS NOT NULL")
        has_version = bool(_one(cur))
        version = 0
        if has_version:
            cur.execute("SELECT application, version FROM edis_fleet_schema")
            row = cur.fetchone()
            if row is not None:
                app, version = str(row[0]), int(row[1])
                if app != APPLICATION:
                    raise JournalError(f"not an edis-fleet journal (application {app!r})")
        else:
            cur.execute("SELECT to_regclass('runs') IS NOT NULL")
            if _one(cur):
                raise JournalError("not an edis-fleet journal (a database with other tables)")
        if version > target:
            raise JournalError(
                f"the journal has schema version {version}, newer than this edis-fleet knows "
                f"({target}); upgrade edis-fleet to use it"
            )
        if not has_version:
            cur.execute(
                "CREATE TABLE edis_fleet_schema (one BOOLEAN PRIMARY KEY DEFAULT TRUE"
                " CHECK (one), application TEXT NOT NULL, version INTEGER NOT NULL)"
            )
            cur.execute(
                "INSERT INTO edis_fleet_schema (application, version) VALUES (%s, 0)",
                (APPLICATION,),
            )
        for step in range(version + 1, target + 1):
            migrations[step](cur)
        if version < target:
            cur.execute("UPDATE edis_fleet_schema SET version = %s", (target,))
    return max(version, target)


def _one(cur: psycopg.Cursor[Any]) -> Any:
    row = cur.fetchone()
    return None if row is None else row[0]
