"""What is particular to the PostgreSQL journal and to the host-wide locks: the version table
and its migrations, the URL and its password (never shown), locks shared by runners on two
"hosts", and the host locks that keep two journals of one machine apart.

The contract both backends share (runs, targets, attempts, locks, takeovers, resume) is in
``test_journal.py``. Every test here uses the suite's real throwaway server (``pg_url``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import JournalError, LockedError
from orchestrator.journal.hostlock import HostLocks, account_scope
from orchestrator.journal.journal import Journal, TargetSpec, TargetState
from orchestrator.journal.location import JournalConfig, redact_url
from orchestrator.journal.pg_schema import PG_MIGRATIONS, migrate
from orchestrator.journal.schema import SCHEMA_VERSION
from tests.cli_support import run_cli


async def new_run(j: Journal, kvm_ids: list[str], *, lock: bool = True) -> str:
    run_id = await j.create_run(
        manifest_path="fleets/prod.yaml", manifest_sha256="a" * 64, plan_sha256="b" * 64
    )
    await j.add_targets(
        run_id,
        [
            TargetSpec(k, 0, i, "debian-12", f"web-{i}", hashlib.sha256(k.encode()).hexdigest())
            for i, k in enumerate(kvm_ids)
        ],
    )
    if lock:
        await j.acquire_locks(run_id, kvm_ids)
    return run_id


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


# --------------------------------------------------------------------------- schema


async def test_a_new_database_gets_the_schema_and_its_version(pg_url: str) -> None:
    async with await Journal.open(pg_url) as j:
        assert j.schema_version == SCHEMA_VERSION
    assert rows(pg_url, "SELECT application, version FROM edis_fleet_schema") == [
        ("edis-fleet", SCHEMA_VERSION)
    ]
    tables = {
        r[0]
        for r in rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    }
    assert {"runs", "targets", "attempts", "locks", "lock_takeovers"} <= tables
    async with await Journal.open(pg_url) as again:  # opening again changes nothing
        assert again.schema_version == SCHEMA_VERSION


def test_pg_migrations_run_in_order_from_an_older_version(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert migrate(conn, {1: PG_MIGRATIONS[1]}) == 1
        conn.execute(
            "INSERT INTO runs (id, manifest_path, manifest_sha256, plan_sha256, pid, hostname,"
            " started_at, updated_at, status) VALUES ('r1', 'm', 'h', 'p', 1, 'h', 0, 0, 'done')"
        )
        applied: list[int] = []

        def to_2(cur: psycopg.Cursor[Any]) -> None:
            applied.append(2)
            cur.execute("ALTER TABLE runs ADD COLUMN note TEXT NOT NULL DEFAULT ''")

        def to_3(cur: psycopg.Cursor[Any]) -> None:
            applied.append(3)
            cur.execute("UPDATE runs SET note = 'migrated'")

        assert migrate(conn, {**PG_MIGRATIONS, 2: to_2, 3: to_3}) == 3
        assert applied == [2, 3]
        assert conn.execute("SELECT version FROM edis_fleet_schema").fetchall() == [(3,)]
        assert conn.execute("SELECT id, note FROM runs").fetchall() == [("r1", "migrated")]


def test_a_version_2_pg_journal_is_migrated_to_3(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert migrate(conn, {1: PG_MIGRATIONS[1], 2: PG_MIGRATIONS[2]}) == 2
        conn.execute(
            "INSERT INTO runs (id, manifest_path, manifest_sha256, plan_sha256, pid, hostname,"
            " started_at, updated_at, status) VALUES ('r1', 'm', 'h', 'p', 1, 'h', 0, 0, 'done')"
        )
        conn.execute(
            "INSERT INTO targets (run_id, kvm_id, wave, position, image, hostname, queued_at)"
            " VALUES ('r1', 'k', 1, 0, 'img', 'host', 0)"
        )
        assert migrate(conn) == SCHEMA_VERSION == 3
        assert conn.execute("SELECT presend_key, proof, known_hosts FROM targets").fetchall() == [
            (None, "", "")
        ]
        conn.execute("UPDATE runs SET status = 'busy'")  # the new status passes the CHECK
        assert conn.execute("SELECT status FROM runs").fetchall() == [("busy",)]


def test_a_newer_pg_journal_is_refused_and_left_alone(pg_url: str) -> None:
    anyio.run(Journal(pg_url).close)  # a journal of this version ...
    with psycopg.connect(pg_url, autocommit=True) as conn:  # ... that a newer one migrated
        conn.execute("UPDATE edis_fleet_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(JournalError, match=r"newer than this edis-fleet knows"):
        Journal(pg_url)
    assert rows(pg_url, "SELECT version FROM edis_fleet_schema") == [(SCHEMA_VERSION + 1,)]


def test_a_foreign_pg_database_is_refused(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE runs (x int)")
    with pytest.raises(JournalError, match="not an edis-fleet journal"):
        Journal(pg_url)
    assert rows(pg_url, "SELECT to_regclass('edis_fleet_schema') IS NULL") == [(True,)]


async def test_two_runners_opening_a_new_database_at_once(pg_url: str) -> None:
    opened: list[Journal] = []

    async def open_one() -> None:
        opened.append(await Journal.open(pg_url))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(open_one)
    assert {j.schema_version for j in opened} == {SCHEMA_VERSION}
    for j in opened:
        await j.close()


async def test_a_lost_connection_is_opened_again(pg_url: str) -> None:
    async with await Journal.open(pg_url) as j:
        run_id = await new_run(j, ["k1", "k2"])
        # The database drops the journal's connection (a restart, a network blip).
        rows(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE application_name = 'edis-fleet'")  # fmt: skip
        with pytest.raises(JournalError):
            await j.write_intents(run_id, ["k1"])  # this one fails: nothing is sent
        await j.write_intents(run_id, ["k2"])  # the next one reconnects
        states = {t.kvm_id: t.state for t in await j.targets(run_id)}
    assert states == {"k1": TargetState.PENDING, "k2": TargetState.INTENT}


# --------------------------------------------------------------------------- the URL


def test_the_password_is_never_shown() -> None:
    assert redact_url("postgresql://fleet:s3cret-pw@db.example:5432/edis") == (
        "postgresql://fleet:***@db.example:5432/edis"
    )
    assert redact_url("postgresql://fleet:{file:/run/secrets/pg}@db/edis") == (
        "postgresql://fleet:***@db/edis"
    )
    assert redact_url("postgresql://fleet@db/edis") == "postgresql://fleet@db/edis"
    assert redact_url(".edis-fleet/journal.sqlite") == ".edis-fleet/journal.sqlite"


def test_a_password_source_is_read_and_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "pg-password"
    secret.write_text("p@ss/word:1\n")
    cfg = JournalConfig(f"postgresql://fleet:{{file:{secret}}}@db/edis")
    conninfo, password = cfg.conninfo()
    assert password is not None
    assert password.reveal() == "p@ss/word:1"
    assert conninfo == "postgresql://fleet:p%40ss%2Fword%3A1@db/edis"
    assert "p@ss" not in cfg.shown
    assert str(secret) not in cfg.shown
    env_cfg = JournalConfig("postgresql://fleet:{env:PG_PW}@db/edis", env={"PG_PW": "hunter22"})
    assert env_cfg.conninfo()[0] == "postgresql://fleet:hunter22@db/edis"
    with pytest.raises(JournalError, match=r"password env PG_PW is not set") as caught:
        JournalConfig("postgresql://fleet:{env:PG_PW}@db/edis").conninfo()
    assert "hunter22" not in str(caught.value)


def test_a_wrong_password_fails_without_showing_it(pg_server: Any) -> None:
    # The test server trusts its socket, so ask for a database that does not exist: the error
    # comes from the server, and the message must still not carry the password.
    url = pg_server.url("no_such_db").replace("postgres@", "postgres:Sekrit-Pw-99@")
    with pytest.raises(JournalError) as caught:
        Journal(url)
    assert "Sekrit-Pw-99" not in str(caught.value)
    assert "postgres:***@" in str(caught.value)


def test_the_config_from_the_environment(tmp_path: Path) -> None:
    env = {
        "EDIS_FLEET_JOURNAL": "postgresql://ci@db/edis",
        "EDIS_FLEET_HOSTNAME": "runner-7",
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    cfg = JournalConfig.from_env(None, env)
    assert (cfg.location, cfg.hostname, cfg.is_url) == ("postgresql://ci@db/edis", "runner-7", True)
    assert cfg.host_lock_dir == tmp_path / "state" / "edis-fleet" / "locks"
    assert JournalConfig.from_env("j.sqlite", env).location == "j.sqlite"  # --journal wins
    home = JournalConfig.from_env(None, {"HOME": str(tmp_path)})
    assert home.location == ".edis-fleet/journal.sqlite"
    assert home.host_lock_dir == tmp_path / ".local" / "state" / "edis-fleet" / "locks"


# --------------------------------------------------------------------------- two hosts


async def test_runners_on_two_hosts_share_locks_and_runs(pg_url: str) -> None:
    clock = FakeClock()
    a = await Journal.open(pg_url, clock=clock, hostname="runner-a", pid=100)
    b = await Journal.open(pg_url, clock=clock, hostname="runner-b", pid=100)
    try:
        run_a = await new_run(a, ["k1", "k2", "k4"])
        run_b = await new_run(b, ["k2", "k3"], lock=False)
        with pytest.raises(LockedError, match=r"pid 100 on runner-a") as caught:
            await b.acquire_locks(run_b, ["k2", "k3"])
        assert caught.value.run_id == run_a
        await a.write_intents(run_a, ["k1"])
        # b sees a's run and its intent: resume, status and report work from any host.
        assert (await b.resume_classification(run_a)).unresolved == ("k1",)
        # a's runner dies: its lease lapses and b takes the run over, recorded.
        clock.advance(121)
        await b.reopen_run(run_a)
        takeovers = await b.acquire_locks(run_a, ["k1", "k2", "k4"])
        assert {(t.kvm_id, t.previous_hostname, t.why) for t in takeovers} == {
            (k, "runner-a", "no heartbeat for 121 s") for k in ("k1", "k2", "k4")
        }
        assert (await b.run(run_a)).hostname == "runner-b"
        with pytest.raises(JournalError, match="state is intent"):
            await b.write_intents(run_a, ["k1"])  # in doubt stays in doubt
        await b.write_intents(run_a, ["k2"])
        # The old runner, back: it may not send, and its heartbeat tells it so.
        with pytest.raises(JournalError, match=r"k4: locked by .* on runner-b\), not by"):
            await a.write_intents(run_a, ["k4"])
        with pytest.raises(LockedError):
            await a.heartbeat(run_a)
        await b.record_outcome(run_a, "k2", TargetState.ACCEPTED, durable=True)
        assert len(await a.lock_takeovers(run_a)) == 3
    finally:
        await a.close()
        await b.close()


async def test_racing_runners_never_both_get_a_vps(pg_url: str) -> None:
    journals = [await Journal.open(pg_url, hostname=f"h{i}") for i in range(4)]
    runs = [await new_run(j, [f"k{n}" for n in range(20)], lock=False) for j in journals]
    won: list[int] = []

    async def take(i: int) -> None:
        try:
            await journals[i].acquire_locks(runs[i], [f"k{n}" for n in range(20)])
            won.append(i)
        except LockedError:
            pass

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(take, i)
    assert len(won) == 1
    locks = await journals[0].locks()
    assert {lk.run_id for lk in locks} == {runs[won[0]]}
    assert len(locks) == 20
    for j in journals:
        await j.close()


# --------------------------------------------------------------------------- host locks


def test_host_locks_keep_two_journals_of_one_machine_apart(tmp_path: Path) -> None:
    scope = account_scope("https://session.edis.at", "ops@example.com")
    first = HostLocks(tmp_path / "locks", scope, journal="a/journal.sqlite")
    second = HostLocks(tmp_path / "locks", scope, journal="b/journal.sqlite")
    other_account = HostLocks(tmp_path / "locks", account_scope("x", "y"), journal="c")
    try:
        assert first.acquire("run-1", ["k1", "k2"]) == []
        with pytest.raises(LockedError, match=r"run-1 .*journal a/journal.sqlite") as caught:
            second.acquire("run-2", ["k3", "k2"])
        assert caught.value.kvm_ids == ["k2"]
        second.acquire("run-2", ["k3"])  # all or none: k3 was free and is taken now
        other_account.acquire("run-3", ["k1"])  # another account's k1 is another VPS
        first.close()  # released on close ...
        assert second.acquire("run-2", ["k1", "k2"]) == []
    finally:
        for h in (first, second, other_account):
            h.close()


def test_host_locks_of_a_dead_process_are_taken_over(tmp_path: Path) -> None:
    scope = account_scope("u", "e")
    dead = HostLocks(tmp_path / "locks", scope, journal="j", pid=999999)
    dead.acquire("run-1", ["k1"])
    # The process dies without closing: the kernel drops its flock (closing the fd does it).
    assert dead._fd is not None
    os.close(dead._fd)
    dead._fd = None
    alive = HostLocks(tmp_path / "locks", scope, journal="j2")
    try:
        assert alive.acquire("run-2", ["k1"]) == ["k1"]
    finally:
        alive.close()
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["vps-locks.sqlite"]


def test_owner_files_of_dead_processes_are_swept(tmp_path: Path) -> None:
    for n in range(3):  # three processes that died holding host locks of another account
        dead = HostLocks(tmp_path / "locks", account_scope("other", str(n)), journal="j")
        dead.acquire("run-0", ["k9"])
        assert dead._fd is not None
        os.close(dead._fd)
    live = HostLocks(tmp_path / "locks", account_scope("other", "live"), journal="j")
    live.acquire("run-1", ["k1"])
    alive = HostLocks(tmp_path / "locks", account_scope("u", "e"), journal="j")
    try:
        alive.acquire("run-2", ["k1"])
        owners = sorted(p.name for p in (tmp_path / "locks").glob("owner-*"))
        assert owners == sorted([f"owner-{live.token}.lock", f"owner-{alive.token}.lock"])
    finally:
        live.close()
        alive.close()


async def test_the_journal_takes_host_locks_with_its_own(tmp_path: Path) -> None:
    scope = account_scope("u", "e")
    a = await Journal.open(
        tmp_path / "a.sqlite", host_locks=HostLocks(tmp_path / "locks", scope, journal="a")
    )
    b = await Journal.open(
        tmp_path / "b.sqlite", host_locks=HostLocks(tmp_path / "locks", scope, journal="b")
    )
    try:
        run_a = await new_run(a, ["k1"])
        run_b = await new_run(b, ["k1"], lock=False)
        with pytest.raises(LockedError, match=run_a):
            await b.acquire_locks(run_b, ["k1"])
        await a.close()
        await b.acquire_locks(run_b, ["k1"])
    finally:
        await a.close()
        await b.close()


def test_a_lock_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "locks"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    locks = HostLocks(shared, account_scope("u", "e"), journal="j")
    with pytest.raises(JournalError, match="not be writable by others"):
        locks.acquire("run-1", ["k1"])
    assert list(shared.iterdir()) == []


# --------------------------------------------------------------------------- the cli


def test_runs_status_and_report_from_any_directory(pg_url: str, tmp_path: Path) -> None:
    """A run recorded by one runner is listed, shown and reported by another (another
    working directory, another host name) through EDIS_FLEET_JOURNAL."""

    async def record() -> str:
        async with await Journal.open(pg_url, hostname="runner-a") as j:
            run_id = await new_run(j, ["k1", "k2"])
            await j.write_intents(run_id, ["k1"])
            await j.record_outcome(run_id, "k1", TargetState.ACCEPTED, durable=True)
            return run_id

    run_id = anyio.run(record)
    env = {"EDIS_FLEET_JOURNAL": pg_url, "EDIS_FLEET_HOSTNAME": "runner-b"}
    listed = run_cli(["runs"], cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert run_id in listed.stdout
    status = run_cli(["status", run_id], cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    assert "resume would: send 1, check readiness of 1" in status.stdout
    report = run_cli(["report", run_id, "--format", "json"], cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr
    assert {t["kvm_id"]: t["state"] for t in json.loads(report.stdout)["targets"]} == {
        "k1": "accepted",
        "k2": "pending",
    }
    assert not (tmp_path / ".edis-fleet").exists()  # no SQLite journal was made on the side


def test_the_cli_never_prints_the_database_password(pg_server: Any, tmp_path: Path) -> None:
    url = pg_server.url("no_such_db").replace("postgres@", "postgres:Sekrit-Pw-99@")
    for args in (["runs", "--journal", url], ["runs"]):
        done = run_cli(args, cwd=tmp_path, env={"EDIS_FLEET_JOURNAL": url})
        assert done.returncode == 2
        assert "postgres:***@" in done.stderr
        assert "Sekrit-Pw-99" not in done.stdout + done.stderr
