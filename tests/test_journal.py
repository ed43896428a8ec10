"""The journal contract: schema and migrations, durable intents, group commit, resume, locks,
takeovers, file modes and secrecy. No mocks: each test runs against a real SQLite file in
``tmp_path`` and — the ones that are not about SQLite's files — against a fresh journal on the
suite's throwaway PostgreSQL server too (``location`` is parametrized; see
``tests/pg_support.py``). PostgreSQL's own schema checks are in ``test_journal_pg.py``."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.clock import FakeClock, SystemClock
from orchestrator.errors import (
    InDoubtError,
    JournalError,
    LockedError,
    NotSentError,
    RejectedError,
)
from orchestrator.fleet import InDoubtPolicy
from orchestrator.journal.journal import Journal, RunStatus, TargetSpec, TargetState
from orchestrator.journal.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, migrate
from orchestrator.journal.sink import JournalSink
from orchestrator.model import Attempt, EventSink, Outcome
from orchestrator.run.limits import Limits
from orchestrator.run.retry import RetryPolicy
from orchestrator.run.scheduler import Job, RunSettings, Scheduler, WaveSpec
from orchestrator.secrets.values import Redactor, Secret

ROOT = Path(__file__).resolve().parents[1]
JournalFactory = Callable[..., Journal]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where the journal lives, in a directory that does not exist yet."""
    return tmp_path / "work" / ".edis-fleet" / "journal.sqlite"


# Tests about SQLite's own files and locking: they run on SQLite only.
SQLITE_ONLY = {
    "test_new_journal_has_schema_version_wal_and_tables",
    "test_an_empty_v0_file_is_migrated",
    "test_a_failed_commit_refuses_intents_and_keeps_outcomes",
    "test_files_are_private",
    "test_no_secret_reaches_the_file",
    # A real killed process (a subprocess test): on PostgreSQL the same is proven by
    # test_shared_journal's runner killed on one machine and resumed on another.
    "test_resume_after_a_killed_process",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses ``location`` on both backends (SQLITE_ONLY: on SQLite)."""
    if "location" in metafunc.fixturenames:
        only = metafunc.definition.originalname in SQLITE_ONLY
        backends = ["sqlite"] if only else ["sqlite", "postgresql"]
        metafunc.parametrize("location", backends, indirect=True)


@pytest.fixture
def location(request: pytest.FixtureRequest, db: Path) -> Path | str:
    """Where the journal under test lives: ``db`` (SQLite) or a fresh PostgreSQL journal."""
    if request.param == "sqlite":
        return db
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def open_journal(location: Path | str) -> Any:
    """A factory ``open_journal(**kwargs)`` for journals on ``location``; all closed after the
    test (a journal may also be abandoned without ``close`` to play a crash)."""
    opened: list[Journal] = []

    def factory(**kwargs: Any) -> Journal:
        j = Journal(kwargs.pop("path", location), **kwargs)
        opened.append(j)
        return j

    yield factory
    for j in opened:
        anyio.run(j.close)


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped) on this host."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def ids(n: int) -> list[str]:
    return [f"kvm{i:04d}" for i in range(n)]


async def new_run(j: Journal, kvm_ids: list[str], *, lock: bool = True) -> str:
    """Create a run with ``kvm_ids`` as targets (waves of 10) and, by default, lock them."""
    run_id = await j.create_run(
        manifest_path="fleets/prod.yaml",
        manifest_sha256="a" * 64,
        plan_sha256="b" * 64,
        options={"concurrency": 100, "in_doubt": "report"},
    )
    specs = [
        TargetSpec(
            kvm_id=k,
            wave=i // 10,
            position=i % 10,
            image="debian-12",
            hostname=f"web-{i}",
            user_data_sha256=hashlib.sha256(k.encode()).hexdigest(),
        )
        for i, k in enumerate(kvm_ids)
    ]
    await j.add_targets(run_id, specs)
    if lock:
        await j.acquire_locks(run_id, kvm_ids)
    return run_id


def sql(location: Path | str, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run ``query`` (``?`` placeholders) on a second, independent connection to the journal
    and commit; return its rows."""
    if isinstance(location, Path):
        with sqlite3.connect(location) as conn:
            return conn.execute(query, args).fetchall()
    import psycopg

    with psycopg.connect(location) as pg, pg.cursor() as cur:
        cur.execute(query.replace("?", "%s"), args)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def states(location: Path | str, run_id: str) -> dict[str, str]:
    """Target states as a second, independent connection sees them."""
    return dict(sql(location, "SELECT kvm_id, state FROM targets WHERE run_id = ?", (run_id,)))


SIDE_FILES = ("journal.sqlite", "journal.sqlite-shm", "journal.sqlite-wal")


def modes(db: Path) -> dict[str, int]:
    """Permission bits of the journal's directory and of every file in it, by name."""
    found = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir()}
    return {db.parent.name: stat.S_IMODE(db.parent.stat().st_mode), **found}


def raw_files(db: Path) -> bytes:
    """The raw bytes of the journal and its side files (-wal, -shm), whatever is there."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.iterdir()))


# --------------------------------------------------------------------------- schema


async def test_new_journal_has_schema_version_wal_and_tables(open_journal: Any, db: Path) -> None:
    j = open_journal()
    assert j.schema_version == SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "targets", "attempts", "locks", "lock_takeovers"} <= tables


async def test_an_empty_v0_file_is_migrated(open_journal: Any, db: Path) -> None:
    db.parent.mkdir(parents=True)
    sqlite3.connect(db).close()  # a database file at version 0, made by hand
    j = open_journal()
    assert j.schema_version == SCHEMA_VERSION
    run_id = await new_run(j, ids(2))
    assert [r.id for r in await j.runs()] == [run_id]


def test_migrations_run_in_order_from_an_older_version(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, {1: MIGRATIONS[1]}) == 1  # a v1 file, as an older release wrote it
    conn.execute(
        "INSERT INTO runs (id, manifest_path, manifest_sha256, plan_sha256, pid, hostname,"
        " started_at, updated_at, status) VALUES ('r1', 'm', 'h', 'p', 1, 'h', 0, 0, 'done')"
    )
    applied: list[int] = []

    def to_2(c: sqlite3.Connection) -> None:
        applied.append(2)
        c.execute("ALTER TABLE runs ADD COLUMN note TEXT NOT NULL DEFAULT ''")

    def to_3(c: sqlite3.Connection) -> None:
        applied.append(3)
        c.execute("UPDATE runs SET note = 'migrated'")

    assert migrate(conn, {**MIGRATIONS, 2: to_2, 3: to_3}) == 3
    assert applied == [2, 3]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert conn.execute("SELECT id, note FROM runs").fetchall() == [("r1", "migrated")]
    conn.close()


def test_a_newer_journal_is_refused_and_left_alone(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.execute("CREATE TABLE future (x)")
    with pytest.raises(JournalError, match=r"newer than this edis-fleet knows"):
        Journal(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    assert names == ["future"]


def test_a_foreign_database_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (x)")
    with pytest.raises(JournalError, match="not an edis-fleet journal"):
        Journal(db)


# --------------------------------------------------------------------------- intents


async def test_intent_is_durable_when_write_intents_returns(
    open_journal: Any, location: Path | str
) -> None:
    j = open_journal()
    run_id = await new_run(j, ids(3))
    await j.write_intents(run_id, ["kvm0001"])
    # A second, independent connection sees only committed data.
    assert states(location, run_id) == {
        "kvm0000": "pending",
        "kvm0001": "intent",
        "kvm0002": "pending",
    }


async def test_concurrent_intents_share_commits(open_journal: Any, location: Path | str) -> None:
    j = open_journal()
    run_id = await new_run(j, ids(200))
    before = j.commits
    async with anyio.create_task_group() as tg:
        for k in ids(200):
            tg.start_soon(j.write_intents, run_id, [k])
    commits = j.commits - before
    assert commits <= 10, f"{commits} commits for 200 concurrent intents"
    assert set(states(location, run_id).values()) == {"intent"}


async def test_intents_are_all_or_none_and_refused_when_unsafe(open_journal: Any) -> None:
    j = open_journal(clock=FakeClock())
    run_id = await new_run(j, ids(4))
    await j.write_intents(run_id, ["kvm0000"])
    await j.record_outcome(run_id, "kvm0000", TargetState.ACCEPTED)
    with pytest.raises(JournalError, match=r"kvm0000: state is accepted"):
        await j.write_intents(run_id, ["kvm0001", "kvm0000"])
    with pytest.raises(JournalError, match=r"nope: not a target"):
        await j.write_intents(run_id, ["nope"])
    await j.write_intents(run_id, ["kvm0002"])
    with pytest.raises(JournalError, match=r"kvm0002: state is intent"):
        await j.write_intents(run_id, ["kvm0002"])  # unresolved: must be resolved first
    await j.release_locks(run_id)
    with pytest.raises(JournalError, match=r"kvm0003: locked by nobody"):
        await j.write_intents(run_id, ["kvm0003"])
    got = {t.kvm_id: t.state for t in await j.targets(run_id)}
    assert got == {
        "kvm0000": TargetState.ACCEPTED,
        "kvm0001": TargetState.PENDING,  # refused with kvm0000: nothing written for it
        "kvm0002": TargetState.INTENT,
        "kvm0003": TargetState.PENDING,
    }


async def test_a_resend_after_not_sent_needs_the_outcome_first(open_journal: Any) -> None:
    clock = FakeClock()
    j = open_journal(clock=clock)
    run_id = await new_run(j, ids(1))
    await j.write_intents(run_id, ["kvm0000"])
    # Buffered, and written in the same transaction before the second intent.
    await j.record_outcome(run_id, "kvm0000", TargetState.PENDING, reason="connection refused")
    clock.advance(5)
    await j.write_intents(run_id, ["kvm0000"])
    [t] = await j.targets(run_id)
    assert (t.state, t.sends, t.sent_at) == (TargetState.INTENT, 2, clock.time())


async def test_a_cancelled_intent_is_not_written(open_journal: Any, location: Path | str) -> None:
    j = open_journal()
    run_id = await new_run(j, ids(1))
    with anyio.CancelScope() as scope:
        scope.cancel()
        await j.write_intents(run_id, ["kvm0000"])
    assert scope.cancelled_caught
    await j.flush()
    assert states(location, run_id) == {"kvm0000": "pending"}


# --------------------------------------------------------------------------- outcomes, resume


async def test_outcomes_and_attempts_are_recorded(open_journal: Any) -> None:
    clock = FakeClock()
    j = open_journal(clock=clock)
    run_id = await new_run(j, ids(3))
    await j.write_intents(run_id, ids(3))
    await j.record_attempt(
        run_id, Attempt("set/reinstall", "kvm0000", Outcome.ACCEPTED, 200, "ok", 0.25)
    )
    await j.record_outcome(run_id, "kvm0000", TargetState.ACCEPTED)
    clock.advance(60)
    await j.record_outcome(run_id, "kvm0000", TargetState.READY, reason="ssh answers")
    await j.record_attempt(
        run_id, Attempt("set/reinstall", "kvm0001", Outcome.REJECTED, 400, "bad image", 0.1)
    )
    await j.record_outcome(run_id, "kvm0001", TargetState.FAILED, reason="bad image")
    await j.record_attempt(
        run_id, Attempt("set/reinstall", "kvm0002", Outcome.IN_DOUBT, None, "read timeout", 30)
    )
    await j.record_outcome(run_id, "kvm0002", TargetState.IN_DOUBT, reason="read timeout")
    targets = {t.kvm_id: t for t in await j.targets(run_id)}
    ready = targets["kvm0000"]
    assert ready.state is TargetState.READY
    assert ready.accepted_at == clock.time() - 60
    assert ready.ready_at == ready.ended_at == clock.time()
    assert ready.reason == "ssh answers"
    assert (targets["kvm0001"].state, targets["kvm0001"].reason) == (
        TargetState.FAILED,
        "bad image",
    )
    assert targets["kvm0002"].state is TargetState.IN_DOUBT
    attempts = await j.attempts(run_id)
    assert [(a.kvm_id, a.outcome, a.http_status) for a in attempts] == [
        ("kvm0000", Outcome.ACCEPTED, 200),
        ("kvm0001", Outcome.REJECTED, 400),
        ("kvm0002", Outcome.IN_DOUBT, None),
    ]
    assert [a.message for a in await j.attempts(run_id, "kvm0001")] == ["bad image"]
    assert j.ignored_outcomes == []


async def test_an_unknown_attempt_outcome_in_the_journal_is_a_journal_error(
    open_journal: Any, location: Path | str
) -> None:
    j = open_journal()
    run_id = await new_run(j, ids(1))
    await j.record_attempt(
        run_id, Attempt("set/reinstall", "kvm0000", Outcome.ACCEPTED, 200, "ok", 0.25)
    )
    await j.flush()
    sql(location, "UPDATE attempts SET outcome = 'exploded'")  # another version, or by hand
    with pytest.raises(JournalError, match=r"kvm0000 .* unknown outcome 'exploded'"):
        await j.attempts(run_id)


async def test_an_unknown_target_state_refuses_its_intent_with_a_journal_error(
    open_journal: Any, location: Path | str
) -> None:
    j = open_journal()
    run_id = await new_run(j, ids(2))
    # A state of another version (or edited by hand): the state's CHECK is lifted to write it.
    if isinstance(location, Path):
        with sqlite3.connect(location) as conn:
            conn.execute("PRAGMA ignore_check_constraints = ON")
            conn.execute("UPDATE targets SET state = 'teleported' WHERE kvm_id = 'kvm0000'")
    else:
        sql(location, "ALTER TABLE targets DROP CONSTRAINT targets_state_check")
        sql(location, "UPDATE targets SET state = 'teleported' WHERE kvm_id = 'kvm0000'")
    with pytest.raises(
        JournalError,
        match=r"intent refused: kvm0000: journal state in run \S+ has an unknown value "
        r"'teleported'; expected one of pending, ",
    ):
        await j.write_intents(run_id, ["kvm0000"])
    await j.write_intents(run_id, ["kvm0001"])  # the rest of the journal works on
    assert states(location, run_id) == {"kvm0000": "teleported", "kvm0001": "intent"}


async def test_an_outcome_that_does_not_fit_is_not_applied(open_journal: Any) -> None:
    j = open_journal()
    run_id = await new_run(j, ids(1))
    await j.record_outcome(run_id, "kvm0000", TargetState.READY, durable=True)
    [t] = await j.targets(run_id)
    assert t.state is TargetState.PENDING
    assert j.ignored_outcomes == [(run_id, "kvm0000", TargetState.READY, "pending")]
    with pytest.raises(ValueError, match="write_intents"):
        await j.record_outcome(run_id, "kvm0000", TargetState.INTENT)


async def test_resume_after_a_crash_without_flush(open_journal: Any, location: Path | str) -> None:
    crashed = open_journal(clock=FakeClock())
    run_id = await new_run(crashed, ids(6))
    await crashed.write_intents(run_id, ids(4))
    await crashed.record_outcome(run_id, "kvm0000", TargetState.ACCEPTED, durable=True)
    await crashed.record_outcome(run_id, "kvm0001", TargetState.ACCEPTED, durable=True)
    await crashed.record_outcome(run_id, "kvm0001", TargetState.READY, durable=True)
    await crashed.record_outcome(run_id, "kvm0002", TargetState.ACCEPTED)  # buffered only
    # The process dies here: no flush, no close. A fresh journal opens the same file.
    fresh = open_journal(clock=FakeClock())
    got = await fresh.resume_classification(run_id)
    assert got.accepted == ("kvm0000",)
    assert got.ready == ("kvm0001",)
    assert got.never_send == ("kvm0001", "kvm0000")
    assert got.unresolved == ("kvm0002", "kvm0003")  # intent without outcome: in doubt
    assert got.pending == ("kvm0004", "kvm0005")
    assert got.failed == got.in_doubt == got.skipped == ()


@pytest.mark.subprocess
async def test_resume_after_a_killed_process(open_journal: Any, location: Path | str) -> None:
    script = textwrap.dedent("""
        import os, signal, sys
        import anyio
        from orchestrator.journal.journal import Journal, TargetSpec, TargetState

        async def main(path):
            j = Journal(path)
            run = await j.create_run(manifest_path="m.yaml", manifest_sha256="0" * 64,
                                     plan_sha256="1" * 64)
            ids = ["a", "b", "c", "d"]
            await j.add_targets(run, [TargetSpec(k, 0, i, "debian-12", k)
                                      for i, k in enumerate(ids)])
            await j.acquire_locks(run, ids)
            await j.write_intents(run, ["a", "b", "c"])
            await j.record_outcome(run, "a", TargetState.ACCEPTED, durable=True)
            await j.record_outcome(run, "b", TargetState.ACCEPTED)  # lost with the process
            print(run, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        anyio.run(main, sys.argv[1])
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await anyio.run_process(
        [sys.executable, "-c", script, str(location)], check=False, env=env, cwd=ROOT
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    run_id = proc.stdout.decode().strip()

    j = open_journal()
    got = await j.resume_classification(run_id)
    assert (got.accepted, got.unresolved, got.pending) == (("a",), ("b", "c"), ("d",))
    # The dead process's locks are stale: resume takes them over and says so.
    takeovers = await j.acquire_locks(run_id, ["a", "b", "c", "d"])
    assert {t.kvm_id for t in takeovers} == {"a", "b", "c", "d"}
    assert all("no longer runs" in t.why for t in takeovers)
    assert len(await j.lock_takeovers(run_id)) == 4
    await j.reopen_run(run_id)
    for k in ("b", "c"):
        await j.record_outcome(run_id, k, TargetState.IN_DOUBT, reason="crash before outcome")
    await j.write_intents(run_id, ["d"])
    with pytest.raises(JournalError, match="state is accepted"):
        await j.write_intents(run_id, ["a"])


async def test_progress_and_run_status(open_journal: Any) -> None:
    clock = FakeClock()
    j = open_journal(clock=clock)
    run_id = await new_run(j, ids(2))
    run = await j.run(run_id)
    assert run.status is RunStatus.RUNNING
    assert run.options == {"concurrency": 100, "in_doubt": "report"}
    assert (run.wave_position, run.failures, run.retries, run.counters) == (0, 0, 0, {})
    await j.save_progress(run_id, wave=2, failures=1)
    await j.save_progress(run_id, retries=7, counters={"throttled": 3})
    run = await j.run(run_id)
    assert (run.wave_position, run.failures, run.retries) == (2, 1, 7)
    assert run.counters == {"throttled": 3}
    clock.advance(10)
    done = await j.finish_run(run_id, RunStatus.DONE)
    assert (done.status, done.ended_at) == (RunStatus.DONE, clock.time())
    assert [r.id for r in await j.runs()] == [run_id]
    assert len(run_id) == len("20261127-2315-ab12cd")
    with pytest.raises(JournalError, match="no run"):
        await j.run("19990101-0000-000000")


async def test_user_data_must_be_a_digest(open_journal: Any) -> None:
    j = open_journal()
    run_id = await new_run(j, [])
    spec = TargetSpec("kvm1", 0, 0, "debian-12", "web", user_data_sha256="#cloud-config\n")
    with pytest.raises(ValueError, match="SHA-256"):
        await j.add_targets(run_id, [spec])


async def test_buffered_outcomes_are_committed_without_waiting_callers(
    open_journal: Any, location: Path | str
) -> None:
    j = open_journal(max_buffered=3, max_delay=0.05)
    run_id = await new_run(j, ids(4))
    await j.write_intents(run_id, ids(4))
    before = j.commits
    await j.record_outcome(run_id, "kvm0000", TargetState.FAILED, reason="x")
    j.enqueue_outcome(run_id, "kvm0001", TargetState.FAILED)
    assert j.commits == before  # buffered
    await j.record_outcome(run_id, "kvm0002", TargetState.FAILED)  # the third: max_buffered
    assert j.commits == before + 1
    j.enqueue_outcome(run_id, "kvm0003", TargetState.IN_DOUBT)
    j.enqueue_attempt(run_id, Attempt("set/reinstall", "kvm0003", Outcome.IN_DOUBT, 502, "", 1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(j.run_flusher)
        await anyio.sleep(0.5)  # ten flush periods
        tg.cancel_scope.cancel()
    assert states(location, run_id)["kvm0003"] == "in_doubt"
    [attempt] = await j.attempts(run_id)
    assert (attempt.kvm_id, attempt.http_status) == ("kvm0003", 502)


async def test_a_failed_commit_refuses_intents_and_keeps_outcomes(
    open_journal: Any, db: Path
) -> None:
    j = open_journal(busy_timeout=0.1)
    run_id = await new_run(j, ids(2))
    await j.write_intents(run_id, ["kvm0000"])
    j.enqueue_outcome(run_id, "kvm0000", TargetState.ACCEPTED)
    other = sqlite3.connect(db, isolation_level=None)  # another process holds the write lock
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(JournalError, match="locked"):
            await j.write_intents(run_id, ["kvm0001"])
    finally:
        other.execute("ROLLBACK")
        other.close()
    await j.flush()  # the outcome waited for the next commit; the refused intent is gone
    assert states(db, run_id) == {"kvm0000": "accepted", "kvm0001": "pending"}
    await j.write_intents(run_id, ["kvm0001"])
    assert states(db, run_id)["kvm0001"] == "intent"


# --------------------------------------------------------------------------- locks


async def test_a_second_run_is_refused_with_the_holder(open_journal: Any) -> None:
    first = open_journal()
    second = open_journal()
    run1 = await new_run(first, ids(3))
    run2 = await new_run(second, ids(5), lock=False)
    with pytest.raises(LockedError) as caught:
        await second.acquire_locks(run2, ["kvm0004", "kvm0001", "kvm0002"])
    assert caught.value.run_id == run1
    assert caught.value.kvm_ids == ["kvm0001", "kvm0002"]
    assert run1 in str(caught.value)
    # All or none: the free kvm0004 was not taken either.
    assert {lk.kvm_id: lk.run_id for lk in await second.locks()} == dict.fromkeys(ids(3), run1)
    await second.acquire_locks(run2, ["kvm0004"])  # nobody holds it
    assert await first.release_locks(run1) == 3
    await second.acquire_locks(run2, ["kvm0001", "kvm0002"])
    locks = {lk.kvm_id: lk.run_id for lk in await second.locks()}
    assert locks == {"kvm0001": run2, "kvm0002": run2, "kvm0004": run2}


async def test_a_lock_of_a_dead_pid_is_taken_over(open_journal: Any, dead_pid: int) -> None:
    ghost = open_journal(pid=dead_pid)  # same host, a process that has exited
    run1 = await new_run(ghost, ids(2))
    j = open_journal()
    run2 = await new_run(j, ids(2), lock=False)
    takeovers = await j.acquire_locks(run2, ids(2))
    assert [(t.kvm_id, t.previous_run_id, t.previous_pid) for t in takeovers] == [
        ("kvm0000", run1, dead_pid),
        ("kvm0001", run1, dead_pid),
    ]
    assert await j.lock_takeovers(run2) == list(takeovers)
    # The old owner can no longer send, and its heartbeat says why.
    with pytest.raises(JournalError, match="not by this process"):
        await ghost.write_intents(run1, ["kvm0000"])
    with pytest.raises(LockedError) as caught:
        await ghost.heartbeat(run1)
    assert caught.value.run_id == run2


async def test_a_lock_without_heartbeat_goes_stale(open_journal: Any) -> None:
    clock = FakeClock()
    remote = open_journal(clock=clock, hostname="ci-runner-7", pid=4242)  # pid not checkable
    run1 = await new_run(remote, ids(1))
    j = open_journal(clock=clock)
    run2 = await new_run(j, ids(1), lock=False)
    clock.advance(100)
    await remote.heartbeat(run1)
    clock.advance(100)  # 100 s since the heartbeat: still live
    with pytest.raises(LockedError, match="ci-runner-7"):
        await j.acquire_locks(run2, ids(1))
    clock.advance(21)
    [t] = await j.acquire_locks(run2, ids(1))
    assert (t.previous_run_id, t.why) == (run1, "no heartbeat for 121 s")


async def test_close_releases_this_process_locks(open_journal: Any, location: Path | str) -> None:
    j = open_journal()
    run_id = await new_run(j, ids(2))
    await j.close()
    assert sql(location, "SELECT count(*) FROM locks") == [(0,)]
    with pytest.raises(JournalError, match="closed"):
        await j.write_intents(run_id, ["kvm0000"])


async def test_two_journals_write_at_the_same_time(open_journal: Any, location: Path | str) -> None:
    a, b = open_journal(), open_journal()
    run_a = await new_run(a, ids(50)[:25])
    run_b = await new_run(b, ids(50)[25:])
    async with anyio.create_task_group() as tg:
        for k in ids(50)[:25]:
            tg.start_soon(a.write_intents, run_a, [k])
        for k in ids(50)[25:]:
            tg.start_soon(b.write_intents, run_b, [k])
    assert (
        set(states(location, run_a).values()) == set(states(location, run_b).values()) == {"intent"}
    )


# --------------------------------------------------------------------------- files and secrets


async def test_files_are_private(open_journal: Any, db: Path) -> None:
    j = open_journal()
    await new_run(j, ids(2))  # writes, so the -wal and -shm files exist
    assert modes(db) == {".edis-fleet": 0o700, **dict.fromkeys(SIDE_FILES, 0o600)}
    await j.close()  # the last connection removes -wal and -shm ...
    assert modes(db) == {".edis-fleet": 0o700, "journal.sqlite": 0o600}
    again = open_journal()  # ... and SQLite recreates them with the database file's mode
    await new_run(again, ids(1))
    assert modes(db) == {".edis-fleet": 0o700, **dict.fromkeys(SIDE_FILES, 0o600)}


async def test_no_secret_reaches_the_file(open_journal: Any, db: Path) -> None:
    marker = "Hunter2-" + "SIGNATURE-9f8e7d"
    j = open_journal(redactor=Redactor([marker]))
    run_id = await j.create_run(
        manifest_path="fleets/prod.yaml",
        manifest_sha256="a" * 64,
        plan_sha256="b" * 64,
        options={"root_password": "pw-" + marker, "note": f"uses {marker}", "retries": 3},
    )
    await j.add_targets(run_id, [TargetSpec("kvm1", 0, 0, "debian-12", "web-1")])
    await j.acquire_locks(run_id, ["kvm1"])
    await j.write_intents(run_id, ["kvm1"])
    message = f"invalid signature {marker} for session"
    await j.record_attempt(
        run_id, Attempt("set/reinstall", "kvm1", Outcome.SESSION, 401, message, 1)
    )
    await j.record_outcome(run_id, "kvm1", TargetState.FAILED, reason=message, durable=True)
    raw = raw_files(db)
    assert b"SQLite format 3" in raw  # the main file
    assert b"invalid signature *** for session" in raw  # the -wal: not checkpointed yet
    assert marker.encode() not in raw
    run = await j.run(run_id)
    assert run.options == {"note": "uses ***", "retries": 3, "root_password": "***"}
    await j.close()
    assert marker.encode() not in raw_files(db)


def test_journal_open_from_async_keeps_the_loop_free(db: Path) -> None:
    async def main() -> int:
        async with await Journal.open(db, hostname=socket.gethostname()) as j:
            return j.schema_version

    assert anyio.run(main) == SCHEMA_VERSION


# --------------------------------------------------------------------------- with the scheduler


class ScriptedAPI:
    """An in-memory ReinstallAPI: each VPS raises its scripted errors in turn, then accepts."""

    def __init__(self, script: dict[str, list[Exception]]) -> None:
        self.script = script
        self.received: dict[str, int] = {}

    async def reinstall(self, kvm_id: str, *, image: str, password: Any, user_data: Any) -> None:
        self.received[kvm_id] = self.received.get(kvm_id, 0) + 1
        if self.script.get(kvm_id):
            raise self.script[kvm_id].pop(0)

    async def power(self, kvm_id: str) -> str:
        return "on"

    async def address(self, kvm_id: str) -> str | None:
        return None


@pytest.mark.parametrize("policy", list(InDoubtPolicy))
async def test_the_scheduler_through_journal_sink(open_journal: Any, policy: InDoubtPolicy) -> None:
    def err(cls: type[Exception], kvm_id: str) -> Exception:
        return cls("scripted", endpoint="set/reinstall", kvm_id=kvm_id)

    j = open_journal()
    names = ["ok", "flaky", "bad", "doubt"]
    run_id = await new_run(j, names)
    api = ScriptedAPI(
        {
            "flaky": [err(NotSentError, "flaky"), err(NotSentError, "flaky")],
            "bad": [err(RejectedError, "bad")],
            "doubt": [err(InDoubtError, "doubt")],
        }
    )
    clock = SystemClock()
    sink: EventSink = JournalSink(j, run_id)
    scheduler = Scheduler(
        api,
        sink,
        clock=clock,
        limits=Limits.create(concurrency=4, rate=1000.0, clock=clock, burst=50),
        settings=RunSettings(
            run_budget=10, in_doubt=policy, retry=RetryPolicy(attempts=4, base=0.001, cap=0.002)
        ),
    )
    jobs = tuple(
        Job(k, 0, "debian-12", Secret("root-pass-1234"), None, "none", 22, 5.0, 0.0, 0.01)
        for k in names
    )
    result = await scheduler.run([WaveSpec(0, jobs, budget=10)])
    await j.flush()
    got = {t.kvm_id: (t.state, t.sends) for t in await j.targets(run_id)}
    # Only resend-after-window resends; reconcile without a proof (readiness none) reports.
    resends = policy is InDoubtPolicy.RESEND_AFTER_WINDOW
    doubt = (TargetState.READY, 2) if resends else (TargetState.IN_DOUBT, 1)
    assert got == {
        "ok": (TargetState.READY, 1),
        "flaky": (TargetState.READY, 3),  # two attempts not sent, each closed as pending
        "bad": (TargetState.FAILED, 1),
        "doubt": doubt,
    }
    assert {k: s for k, (s, _) in got.items()} == result.states
    assert api.received == {"ok": 1, "flaky": 3, "bad": 1, "doubt": got["doubt"][1]}
    assert j.ignored_outcomes == []


# --------------------------------------------------------------------------- schema version 2


async def test_version_2_facts_resend_crash_and_wave_ready(open_journal: Any) -> None:
    """The resend decision and the one resend, a crashed run's (redacted) error, when each
    wave became ready, and the statuses crashed and rto_missed — on both backends."""
    j = open_journal(redactor=Redactor(["hunter2"]))
    run_id = await new_run(j, ["a", "b"])
    await j.write_intents(run_id, ["a"])
    await j.record_outcome(run_id, "a", TargetState.IN_DOUBT, reason="lost")
    j.enqueue_resend_decision(run_id, "a")
    await j.save_progress(run_id, wave_ready={0: 1234.5})
    (a, _b) = await j.targets(run_id)
    assert a.resend_decided_at is not None
    assert a.resent_at is None
    await j.write_intents(run_id, ["a"], resend=True)
    await j.record_outcome(run_id, "a", TargetState.IN_DOUBT, reason="lost again", durable=True)
    with pytest.raises(JournalError, match="already resent once"):
        await j.write_intents(run_id, ["a"], resend=True)
    (a, _b) = await j.targets(run_id)
    assert (a.sends, a.state) == (2, TargetState.IN_DOUBT)
    assert a.resent_at is not None
    run = await j.finish_run(run_id, RunStatus.CRASHED, error="boom with hunter2")
    assert (run.status, run.error, run.wave_ready) == (
        RunStatus.CRASHED, "boom with ***", {0: 1234.5},
    )  # fmt: skip
    run = await j.reopen_run(run_id)
    assert (run.status, run.error) == (RunStatus.RUNNING, "")
    run = await j.finish_run(run_id, RunStatus.RTO_MISSED)
    assert run.status is RunStatus.RTO_MISSED


def test_a_version_1_file_is_migrated_with_its_runs_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, {1: MIGRATIONS[1]})
    conn.execute(
        "INSERT INTO runs (id, manifest_path, manifest_sha256, plan_sha256, pid, hostname,"
        " started_at, updated_at, status) VALUES ('r1', 'f', 'a', 'b', 1, 'h', 1, 2, 'in_doubt')"
    )
    conn.execute(
        "INSERT INTO targets (run_id, kvm_id, wave, position, image, hostname, queued_at)"
        " VALUES ('r1', 'k', 1, 0, 'img', 'host', 1)"
    )
    conn.close()
    j = Journal(path)
    try:
        assert j.schema_version == SCHEMA_VERSION == 3
        run = anyio.run(j.run, "r1")
        assert (run.status, run.error, run.wave_ready) == (RunStatus.IN_DOUBT, "", {})
        (target,) = anyio.run(j.targets, "r1")
        assert (target.resend_decided_at, target.resent_at) == (None, None)
    finally:
        anyio.run(j.close)
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        check.close()


# --------------------------------------------------------------------------- schema version 3


async def test_version_3_a_presend_key_is_durable_with_its_intent(open_journal: Any) -> None:
    """The pre-send host key buffered before an intent is committed in the intent's
    transaction (no flush in between); proof and known_hosts are facts too; the status busy —
    on both backends."""
    j = open_journal()
    run_id = await new_run(j, ["a", "b"])
    j.enqueue_host_facts(run_id, "a", presend_key="ssh-ed25519 AAAAold")
    j.enqueue_host_facts(run_id, "b", presend_key="")  # scanned: nothing answered
    await j.write_intents(run_id, ["a"])  # durable: the facts went with it
    (a, b) = await j.targets(run_id, flush=False)
    assert (a.presend_key, a.state, b.presend_key) == (
        "ssh-ed25519 AAAAold",
        TargetState.INTENT,
        "",
    )
    j.enqueue_host_facts(run_id, "a", proof="pinned", known_hosts="h ssh-ed25519 AAAAnew")
    (a, b) = await j.targets(run_id)
    assert (a.presend_key, a.proof, a.known_hosts) == (
        "ssh-ed25519 AAAAold", "pinned", "h ssh-ed25519 AAAAnew",
    )  # fmt: skip
    assert (b.proof, b.known_hosts) == ("", "")
    run = await j.finish_run(run_id, RunStatus.BUSY)
    assert run.status is RunStatus.BUSY


def test_a_version_2_file_is_migrated_to_3(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, {1: MIGRATIONS[1], 2: MIGRATIONS[2]})
    conn.execute(
        "INSERT INTO runs (id, manifest_path, manifest_sha256, plan_sha256, pid, hostname,"
        " started_at, updated_at, status, error) VALUES ('r1', 'f', 'a', 'b', 1, 'h', 1, 2,"
        " 'crashed', 'disk full')"
    )
    conn.execute(
        "INSERT INTO targets (run_id, kvm_id, wave, position, image, hostname, queued_at,"
        " resent_at) VALUES ('r1', 'k', 1, 0, 'img', 'host', 1, 5)"
    )
    conn.close()
    j = Journal(path)
    try:
        assert j.schema_version == SCHEMA_VERSION == 3
        run = anyio.run(j.run, "r1")
        assert (run.status, run.error) == (RunStatus.CRASHED, "disk full")
        (target,) = anyio.run(j.targets, "r1")
        assert (target.resent_at, target.presend_key, target.proof) == (5, None, "")
    finally:
        anyio.run(j.close)
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA foreign_key_check").fetchall() == []
        sql = check.execute("SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
        assert "'busy'" in sql
        assert "runs_v3" not in sql
    finally:
        check.close()
