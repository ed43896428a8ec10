"""The journal's schema, its migrations, and the records the journal hands back.

``journal.py`` is the async API (group commit, resume), ``journal_sink.py`` its
``EventSink`` for the scheduler, ``journal_store.py`` the blocking SQL on one connection and
``journal_locks.py`` the lock rows within it; this module holds what is on disk and the plain
data that comes out of it, so the schema can be read in one place.

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
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from orchestrator.errors import JournalError
from orchestrator.model import Outcome, TargetState

SCHEMA_VERSION = 3
# "EDIS" in ASCII: marks the file as an edis-fleet journal for `file(1)` and for us.
APPLICATION_ID = 0x45444953


class RunStatus(enum.StrEnum):
    """Where a whole run stands."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"
    IN_DOUBT = "in_doubt"
    # Version 2: every VPS back but over the RTO; stopped by an internal error or a fault of
    # this machine (``runs.error`` says which). The words of ``report.contract``.
    RTO_MISSED = "rto_missed"
    CRASHED = "crashed"
    # Version 3: refused because another run holds some of its VPSes; nothing was sent.
    BUSY = "busy"


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


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    """Create the first schema: runs, targets, attempts, locks, lock_takeovers."""
    conn.execute(f"""
        CREATE TABLE runs (
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
            counters_json   TEXT NOT NULL DEFAULT '{{}}'
        )""")
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
    conn.execute(f"""
        CREATE TABLE runs_v2 (
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
            counters_json   TEXT NOT NULL DEFAULT '{{}}',
            error           TEXT NOT NULL DEFAULT '',
            waves_json      TEXT NOT NULL DEFAULT '{{}}'
        )""")
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


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class TargetSpec:
    """One VPS to add to a run (what the plan says about it).

    ``user_data_sha256`` is a hex SHA-256 digest or None; anything else is refused, so the
    document itself can never end up in the journal by mistake.
    """

    kvm_id: str
    wave: int
    position: int
    image: str
    hostname: str
    user_data_sha256: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``, with its JSON columns parsed."""

    id: str
    manifest_path: str
    manifest_sha256: str
    plan_sha256: str
    options: Mapping[str, Any]
    pid: int
    hostname: str
    started_at: float
    updated_at: float
    ended_at: float | None
    status: RunStatus
    wave_position: int
    failures: int
    retries: int
    counters: Mapping[str, int]
    # Version 2: why a crashed run stopped (redacted), and when each wave became ready.
    error: str = ""
    wave_ready: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetRecord:
    """One row of ``targets``."""

    run_id: str
    kvm_id: str
    wave: int
    position: int
    image: str
    hostname: str
    user_data_sha256: str | None
    state: TargetState
    sends: int
    queued_at: float
    sent_at: float | None
    accepted_at: float | None
    ready_at: float | None
    ended_at: float | None
    reason: str
    # Version 2: the in-doubt resend was decided (after the window from ``sent_at``) / sent.
    resend_decided_at: float | None = None
    resent_at: float | None = None
    # Version 3: the pre-send host key (``''``: nothing answered; None: no scan), the proof
    # the reinstall got and its proven host key as a known_hosts line (``''``: none).
    presend_key: str | None = None
    proof: str = ""
    known_hosts: str = ""


@dataclass(frozen=True)
class AttemptRecord:
    """One row of ``attempts``."""

    run_id: str
    kvm_id: str | None
    at: float
    endpoint: str
    outcome: Outcome
    http_status: int | None
    message: str
    seconds: float


@dataclass(frozen=True)
class LockRecord:
    """One row of ``locks``."""

    kvm_id: str
    run_id: str
    pid: int
    hostname: str
    acquired_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class LockTakeover:
    """A stale lock that ``acquire_locks`` took over; ``why`` says how it was found stale."""

    kvm_id: str
    previous_run_id: str
    previous_pid: int
    previous_hostname: str
    previous_heartbeat_at: float
    why: str


@dataclass(frozen=True)
class ResumeClassification:
    """A run's targets sorted by what resume must do with them (each in wave order).

    - ``ready``, ``accepted``: the reinstall was accepted — never send again (``accepted``
      ones may still need a readiness check).
    - ``pending``: never sent, or known not sent — continue.
    - ``unresolved``: an intent without an outcome: the POST may or may not have left. In
      doubt; apply the run's in-doubt policy.
    - ``in_doubt``, ``failed``, ``skipped``: as recorded.
    """

    ready: tuple[str, ...]
    accepted: tuple[str, ...]
    pending: tuple[str, ...]
    unresolved: tuple[str, ...]
    in_doubt: tuple[str, ...]
    failed: tuple[str, ...]
    skipped: tuple[str, ...]

    @property
    def never_send(self) -> tuple[str, ...]:
        """VPSes whose reinstall was accepted: ``ready`` + ``accepted``."""
        return self.ready + self.accepted

    @property
    def all_in_doubt(self) -> tuple[str, ...]:
        """``unresolved`` + ``in_doubt``: every VPS whose reinstall may or may not have run."""
        return self.unresolved + self.in_doubt


def classify_targets(targets: Sequence[TargetRecord]) -> ResumeClassification:
    """Sort ``targets`` into a ``ResumeClassification`` (in wave, position order)."""
    groups: dict[TargetState, list[str]] = {s: [] for s in TargetState}
    for t in sorted(targets, key=lambda t: (t.wave, t.position, t.kvm_id)):
        groups[t.state].append(t.kvm_id)
    return ResumeClassification(
        ready=tuple(groups[TargetState.READY]),
        accepted=tuple(groups[TargetState.ACCEPTED]),
        pending=tuple(groups[TargetState.PENDING]),
        unresolved=tuple(groups[TargetState.INTENT]),
        in_doubt=tuple(groups[TargetState.IN_DOUBT]),
        failed=tuple(groups[TargetState.FAILED]),
        skipped=tuple(groups[TargetState.SKIPPED]),
    )


# Keys whose values are never written, whatever the caller passes in a run's options.
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|signature|user_?data|api_?key|credential", re.IGNORECASE
)


def mask_options(value: Any) -> Any:
    """Return a copy of JSON-like ``value`` with the values of secret-looking keys as ``***``."""
    if isinstance(value, Mapping):
        return {
            str(k): "***" if _SECRET_KEY.search(str(k)) else mask_options(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_options(v) for v in value]
    return value


E = TypeVar("E", bound=enum.Enum)


def known_value(kind: type[E], value: Any, what: str) -> E:
    """Return ``kind(value)``; raise ``JournalError`` naming ``what`` for a value this
    version does not know (a journal written by another version, or edited by hand)."""
    try:
        return kind(value)
    except ValueError:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise JournalError(
            f"journal {what} has an unknown value {shown}; expected one of "
            f"{', '.join(str(k.value) for k in kind)}"
        ) from None


def _json(text: Any, what: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise JournalError(f"journal {what} is not readable JSON") from None


def run_from_row(row: sqlite3.Row | Mapping[str, Any]) -> RunRecord:
    """Build a ``RunRecord`` from a ``SELECT * FROM runs`` row (SQLite row or a mapping).

    Raises ``JournalError`` for a status or options this version cannot read.
    """
    return RunRecord(
        id=row["id"],
        manifest_path=row["manifest_path"],
        manifest_sha256=row["manifest_sha256"],
        plan_sha256=row["plan_sha256"],
        options=_json(row["options_json"], f"run {row['id']} options"),
        pid=row["pid"],
        hostname=row["hostname"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        ended_at=row["ended_at"],
        status=known_value(RunStatus, row["status"], f"run {row['id']} status"),
        wave_position=row["wave_position"],
        failures=row["failures"],
        retries=row["retries"],
        counters=_json(row["counters_json"], f"run {row['id']} counters"),
        error=row["error"],
        wave_ready={
            int(k): float(v) for k, v in _json(row["waves_json"], f"run {row['id']} waves").items()
        },
    )


def attempt_from_row(row: sqlite3.Row | Mapping[str, Any]) -> AttemptRecord:
    """Build an ``AttemptRecord`` from a row of ``attempts`` (the record's columns).

    Raises ``JournalError`` for an outcome this version does not know (a journal written by
    another version, or edited by hand): a report must not guess what such an attempt meant.
    """
    try:
        outcome = Outcome(row["outcome"])
    except ValueError:
        raise JournalError(
            f"journal attempt of {row['kvm_id'] or 'the account'} at {row['at']} has an "
            f"unknown outcome {row['outcome']!r}; expected one of "
            f"{', '.join(o.value for o in Outcome)}"
        ) from None
    return AttemptRecord(
        run_id=row["run_id"],
        kvm_id=row["kvm_id"],
        at=row["at"],
        endpoint=row["endpoint"],
        outcome=outcome,
        http_status=row["http_status"],
        message=row["message"],
        seconds=row["seconds"],
    )


def target_from_row(row: sqlite3.Row | Mapping[str, Any]) -> TargetRecord:
    """Build a ``TargetRecord`` from a ``SELECT * FROM targets`` row (SQLite row or a mapping).

    Raises ``JournalError`` for a state this version does not know.
    """
    fields = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row is not a Mapping
    what = f"state of {fields.get('kvm_id')} in run {fields.get('run_id')}"
    fields["state"] = known_value(TargetState, fields["state"], what)
    return TargetRecord(**fields)
