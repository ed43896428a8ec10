"""The SQLite journal's schema: its tables, the target transitions, and the migrations.

``records.py`` holds the plain data read back from these tables and ``store.py`` the SQL run
on them; ``pg_schema.py`` is the PostgreSQL twin of this module. This module holds what is on
disk, so the schema can be read in one place.

Schema, version 3 (``PRAGMA user_version = 3``, ``PRAGMA application_id = 0x45444953``,
"EDIS"). Times are wall-clock Unix seconds (REAL) from the injected ``Clock``. Version 2 added
the statuses ``rto_missed`` and ``crashed``, ``runs.error`` and ``runs.waves_json``, and
``targets.resend_decided_at`` and ``targets.resent_at`` (see ``V2_RUN_COLUMNS``). Version 3
added the status ``busy`` and ``targets.presend_key``, ``targets.proof`` and
``targets.known_hosts`` (see ``V3_TARGET_COLUMNS``).

``runs`` — one row per run.
    ``id`` TEXT PK (``20261127-2315-ab12cd``: UTC start minute + 6 random hex digits, so ids
    sort by start time), ``manifest_path``, ``manifest_sha256``, ``plan_sha256``,
    ``options_json`` (the run's options, secret-looking keys masked, redacted), ``pid`` and
    ``hostname`` of the process that last started or resumed it, ``started_at``,
    ``updated_at`` (progress or heartbeat), ``ended_at`` (NULL while running), ``status``
    (``RunStatus``), and what resume carries over: ``wave_position``, ``failures``,
    ``retries``, ``counters_json`` (any further named counters), ``waves_json`` (when each
    wave became ready: a resumed soak is served in full), ``error`` (why a ``crashed`` run
    stopped, redacted).

``targets`` — one row per VPS of a run, PK ``(run_id, kvm_id)``.
    ``wave``, ``position`` (order within the wave), ``image``, ``hostname``,
    ``user_data_sha256`` (the digest only, never the document), ``state`` (``model.TargetState``),
    ``sends`` (how many intents were written), the time of each phase: ``queued_at``,
    ``sent_at`` (the latest intent), ``accepted_at``, ``ready_at``, ``ended_at``,
    ``reason`` (the final reason text, redacted), ``resend_decided_at`` (the in-doubt policy
    decided to resend it once the install window from ``sent_at`` passed) and ``resent_at``
    (that resend's intent was written: an intent marked as a resend is refused after it, so a
    VPS gets at most one resend per run), ``presend_key`` (readiness mode ssh: the public
    host key a key scan found just before the send, written with or before its intent; ``''``
    when nothing answered, NULL when no scan was made), ``proof`` (which proof the reinstall
    got: ``pinned``, ``key-changed`` or ``weaker``; ``''`` none) and ``known_hosts`` (the proven
    host key as a known_hosts line). Host keys are public: none of this is a secret.

``attempts`` — one row per API call: ``id`` (rowid), ``run_id``, ``kvm_id`` (NULL for
    account-wide calls), ``at``, ``endpoint``, ``outcome`` (``model.Outcome`` value),
    ``http_status`` (NULL when no response came), ``message`` (server text, redacted),
    ``seconds`` (duration).

``locks`` — who may reinstall a VPS right now, PK ``kvm_id``: ``run_id``, ``pid``,
    ``hostname``, ``acquired_at``, ``heartbeat_at``. A lock is stale when its pid is gone on
    this same host or its heartbeat is older than the journal's ``lock_stale_after``.

``lock_takeovers`` — history of stale locks taken over: ``at``, ``kvm_id``, ``run_id`` (the
    taker), ``previous_run_id``, ``previous_pid``, ``previous_hostname``,
    ``previous_heartbeat_at``, ``why``.

Target states (``model.TargetState``) and the transitions the journal allows::

    pending ──► intent ──► accepted ──► ready
       ▲          │  │        │
       └─not sent─┘  │        └──► failed
                     └──► failed | in_doubt
    in_doubt ──► accepted | ready | failed        (what a later check found)
    pending ──► skipped | failed
    failed | in_doubt | skipped ──► intent        (a deliberate resend: after the install
                                                   window, or on resume)

``accepted`` and ``ready`` never go back to ``intent``: the journal refuses an intent for them,
and for ``intent`` itself (a send whose result is unknown must be resolved first).

Migrations: ``MIGRATIONS[n]`` turns a version ``n - 1`` file into version ``n``; on open they
run in order inside one ``BEGIN IMMEDIATE`` transaction. Version 0 is a new, empty file. A file
with a newer version than ``SCHEMA_VERSION`` is refused, never touched.
"""

from __future__ import annotations

import enum
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping

from orchestrator.errors import JournalError
from orchestrator.journal.records import RunStatus
from orchestrator.model import TargetState

SCHEMA_VERSION = 3
# "EDIS" in ASCII: marks the file as an edis-fleet journal for `file(1)` and for us.
APPLICATION_ID = 0x45444953

# For each outcome state, the states a target may be in to take it. An outcome that does not
# fit (a bug upstream) is not applied: above all, nothing may turn ``accepted`` back into
# something that would be sent again.
OUTCOME_FROM: dict[TargetState, frozenset[TargetState]] = {
    TargetState.PENDING: frozenset({TargetState.INTENT}),
    TargetState.ACCEPTED: frozenset({TargetState.INTENT, TargetState.IN_DOUBT}),
    TargetState.READY: frozenset({TargetState.ACCEPTED, TargetState.IN_DOUBT}),
    TargetState.FAILED: frozenset(
        {TargetState.PENDING, TargetState.INTENT, TargetState.ACCEPTED, TargetState.IN_DOUBT}
    ),
    # From ``in_doubt`` too: a resumed run re-states a doubt it carries over (with its
    # decided resend) before serving the rest of the install window.
    TargetState.IN_DOUBT: frozenset({TargetState.INTENT, TargetState.IN_DOUBT}),
    TargetState.SKIPPED: frozenset({TargetState.PENDING}),
}

# States an intent may be written from; see the module docstring.
INTENT_FROM = frozenset(
    {TargetState.PENDING, TargetState.FAILED, TargetState.IN_DOUBT, TargetState.SKIPPED}
)


def sql_list(states: Iterable[enum.Enum]) -> str:
    """Return ``'a', 'b'`` for a SQL ``IN (...)`` over enum values (ours, never input)."""
    return ", ".join(sorted(f"'{s.value}'" for s in states))


def _create_runs(conn: sqlite3.Connection, name: str, extra: str = "") -> None:
    """Create the table ``runs`` with version 1's columns under ``name``, then ``extra`` (the SQL
    of further columns, each led by a comma): version 2 rebuilds ``runs`` from these."""
    conn.execute(f"""
        CREATE TABLE {name} (
            id              TEXT PRIMARY KEY,
            manifest_path   TEXT NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            plan_sha256     TEXT NOT NULL,
            options_json    TEXT NOT NULL DEFAULT '{{}}',
            pid             INTEGER NOT NULL,
            hostname        TEXT NOT NULL,
            started_at      REAL NOT NULL,
            updated_at      REAL NOT NULL,
            ended_at        REAL,
            status          TEXT NOT NULL CHECK (status IN ({sql_list(RunStatus)})),
            wave_position   INTEGER NOT NULL DEFAULT 0,
            failures        INTEGER NOT NULL DEFAULT 0,
            retries         INTEGER NOT NULL DEFAULT 0,
            counters_json   TEXT NOT NULL DEFAULT '{{}}'{extra}
        )""")


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    """Create the first schema: runs, targets, attempts, locks, lock_takeovers."""
    _create_runs(conn, "runs")
    conn.execute(f"""
        CREATE TABLE targets (
            run_id           TEXT NOT NULL REFERENCES runs(id),
            kvm_id           TEXT NOT NULL,
            wave             INTEGER NOT NULL,
            position         INTEGER NOT NULL,
            image            TEXT NOT NULL,
            hostname         TEXT NOT NULL,
            user_data_sha256 TEXT,
            state            TEXT NOT NULL DEFAULT 'pending'
                             CHECK (state IN ({sql_list(TargetState)})),
            sends            INTEGER NOT NULL DEFAULT 0,
            queued_at        REAL NOT NULL,
            sent_at          REAL,
            accepted_at      REAL,
            ready_at         REAL,
            ended_at         REAL,
            reason           TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (run_id, kvm_id)
        )""")
    conn.execute("CREATE INDEX targets_by_state ON targets(run_id, state)")
    conn.execute("""
        CREATE TABLE attempts (
            id          INTEGER PRIMARY KEY,
            run_id      TEXT NOT NULL REFERENCES runs(id),
            kvm_id      TEXT,
            at          REAL NOT NULL,
            endpoint    TEXT NOT NULL,
            outcome     TEXT NOT NULL,
            http_status INTEGER,
            message     TEXT NOT NULL DEFAULT '',
            seconds     REAL NOT NULL
        )""")
    conn.execute("CREATE INDEX attempts_by_target ON attempts(run_id, kvm_id)")
    conn.execute("""
        CREATE TABLE locks (
            kvm_id       TEXT PRIMARY KEY,
            run_id       TEXT NOT NULL REFERENCES runs(id),
            pid          INTEGER NOT NULL,
            hostname     TEXT NOT NULL,
            acquired_at  REAL NOT NULL,
            heartbeat_at REAL NOT NULL
        )""")
    conn.execute("CREATE INDEX locks_by_run ON locks(run_id)")
    conn.execute("""
        CREATE TABLE lock_takeovers (
            id                    INTEGER PRIMARY KEY,
            at                    REAL NOT NULL,
            kvm_id                TEXT NOT NULL,
            run_id                TEXT NOT NULL,
            previous_run_id       TEXT NOT NULL,
            previous_pid          INTEGER NOT NULL,
            previous_hostname     TEXT NOT NULL,
            previous_heartbeat_at REAL NOT NULL,
            why                   TEXT NOT NULL
        )""")


# Version 2's new columns, shared with the PostgreSQL schema: ``runs.error`` (why a crashed
# run stopped, redacted), ``runs.waves_json`` (``{wave: unix time it became ready}``: resume
# serves an interrupted soak in full from it), ``targets.resend_decided_at`` (the in-doubt
# policy decided to resend this VPS after its install window, counted from ``sent_at``) and
# ``targets.resent_at`` (that resend's intent was written: never a second one in this run).
V2_RUN_COLUMNS = ("error", "waves_json")
V2_TARGET_COLUMNS = ("resend_decided_at", "resent_at")


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """Version 2: the statuses ``rto_missed`` and ``crashed`` (SQLite cannot change a CHECK:
    ``runs`` is rebuilt; ``Store`` migrates before it switches foreign keys on), ``runs.error``,
    ``runs.waves_json``, ``targets.resend_decided_at`` and ``targets.resent_at``."""
    _create_runs(
        conn,
        "runs_v2",
        ",\n            error           TEXT NOT NULL DEFAULT '',"
        "\n            waves_json      TEXT NOT NULL DEFAULT '{}'",
    )
    conn.execute(
        "INSERT INTO runs_v2 (id, manifest_path, manifest_sha256, plan_sha256, options_json, pid,"
        " hostname, started_at, updated_at, ended_at, status, wave_position, failures, retries,"
        " counters_json) SELECT id, manifest_path, manifest_sha256, plan_sha256, options_json,"
        " pid, hostname, started_at, updated_at, ended_at, status, wave_position, failures,"
        " retries, counters_json FROM runs"
    )
    conn.execute("DROP TABLE runs")
    conn.execute("ALTER TABLE runs_v2 RENAME TO runs")
    conn.execute("ALTER TABLE targets ADD COLUMN resend_decided_at REAL")
    conn.execute("ALTER TABLE targets ADD COLUMN resent_at REAL")


# Version 3's new target columns, shared with the PostgreSQL schema (see the docstring).
V3_TARGET_COLUMNS = ("presend_key", "proof", "known_hosts")


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    """Version 3: the status ``busy`` (``runs`` is rebuilt for its CHECK, as in version 2),
    ``targets.presend_key``, ``targets.proof`` and ``targets.known_hosts``."""
    columns = [str(r[1]) for r in conn.execute("PRAGMA table_info(runs)")]
    listed = ", ".join(columns)
    sql = str(
        conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'"
        ).fetchone()[0]
    )
    checked = re.sub(
        r"CHECK \(status IN \([^)]*\)\)", f"CHECK (status IN ({sql_list(RunStatus)}))", sql
    )
    # A renamed table's text reads ``CREATE TABLE "runs"``: match either spelling.
    conn.execute(re.sub(r'CREATE TABLE\s+"?runs"?', "CREATE TABLE runs_v3", checked, count=1))
    conn.execute(f"INSERT INTO runs_v3 ({listed}) SELECT {listed} FROM runs")  # noqa: S608
    conn.execute("DROP TABLE runs")
    conn.execute("ALTER TABLE runs_v3 RENAME TO runs")
    conn.execute("ALTER TABLE targets ADD COLUMN presend_key TEXT")
    conn.execute("ALTER TABLE targets ADD COLUMN proof TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE targets ADD COLUMN known_hosts TEXT NOT NULL DEFAULT ''")


Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: dict[int, Migration] = {
    1: _migrate_to_1,
    2: _migrate_to_2,
    3: _migrate_to_3,
}


def migrate(conn: sqlite3.Connection, migrations: Mapping[int, Migration] = MIGRATIONS) -> int:
    """Bring the file behind ``conn`` (autocommit mode) to the newest version in ``migrations``.

    Runs the missing steps in order in one ``BEGIN IMMEDIATE`` transaction (so two processes
    opening a new journal at once do not both create it) and returns the version reached.
    Raises ``JournalError`` when the file is newer than ``migrations`` know, belongs to another
    application, is an unversioned database that already has tables, or when the table has a
    gap; the file is left untouched then.
    """
    target = max(migrations, default=0)
    missing = [v for v in range(1, target + 1) if v not in migrations]
    if missing:
        raise JournalError(f"journal migrations have a gap: no step to version {missing[0]}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        if app_id not in (0, APPLICATION_ID):
            raise JournalError(f"not an edis-fleet journal (application_id {app_id:#x})")
        if version > target:
            raise JournalError(
                f"the journal has schema version {version}, newer than this edis-fleet knows "
                f"({target}); upgrade edis-fleet to use it"
            )
        if version == 0 and app_id == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise JournalError("not an edis-fleet journal (a database with other tables)")
        for step in range(version + 1, target + 1):
            migrations[step](conn)
        if version < target:
            conn.execute(f"PRAGMA user_version = {int(target)}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return max(version, target)
