"""The run's contract: one exit-code table judged from the whole run, the error boundary,
faults of this machine, resend accounting, soaks on resume, plans bound to their endpoint.

In-process (``main(argv)``) against a simulator served from a background thread; the kills
of real processes are in ``test_kill_resume.py``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from orchestrator.cli import exitcodes
from orchestrator.journal import Journal, TargetSpec
from orchestrator.journal.store import Store
from orchestrator.report import contract as table
from orchestrator.simulator import Simulator
from tests.cli_support import run_cli, wait_until
from tests.conftest import ThreadSims
from tests.test_apply import apply, env_for, fleet, received
from tests.test_resume import last_run

BOTH_BUDGETS_OPEN = "  failure_budget: {wave: 100%, run: 100%}\n"


@pytest.fixture
def sim(thread_sim: Simulator) -> Simulator:
    """The commands run in-process: the simulator serves from a background thread."""
    return thread_sim


def cli(sim: Simulator, cwd: Path, *args: str) -> tuple[int, str, str]:
    done = run_cli(args, cwd=cwd, env=env_for(sim))
    return done.returncode, done.stdout, done.stderr


def journal_file(tmp: Path) -> Path:
    return tmp / ".edis-fleet" / "journal.sqlite"


def rows(tmp: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    if not journal_file(tmp).exists():
        return []
    # Read-only: never creates the journal before the product does.
    db = sqlite3.connect(f"file:{journal_file(tmp)}?mode=ro", uri=True, timeout=30)
    try:
        return list(db.execute(sql, args))
    finally:
        db.close()


def report_json(sim: Simulator, tmp: Path, run_id: str) -> dict[str, object]:
    code, out, err = cli(sim, tmp, "report", run_id, "--format", "json")
    assert code == 0, err
    data: dict[str, object] = json.loads(out)["run"]
    return data


def runs_line(sim: Simulator, tmp: Path, run_id: str) -> list[str]:
    code, out, err = cli(sim, tmp, "runs")
    assert code == 0, err
    return next(line.split() for line in out.splitlines() if line.startswith(run_id))


def slow_failing(path: Path) -> None:
    """A failed install is seen after a 2 s deadline instead of a minute."""
    path.write_text(path.read_text().replace("deadline: 1m", "deadline: 2s"))


# --------------------------------------------------------------------------- the table


def test_the_cli_table_and_the_verdicts_agree() -> None:
    assert table.EXIT_CODES == {
        table.Verdict.OK: exitcodes.OK,
        table.Verdict.FAILED: exitcodes.FAILED,
        table.Verdict.IN_DOUBT: exitcodes.IN_DOUBT,
        table.Verdict.ABORTED: exitcodes.BUDGET,
        table.Verdict.INTERRUPTED: exitcodes.INTERRUPTED,
        table.Verdict.RTO_MISSED: exitcodes.RTO_MISSED,
        table.Verdict.CRASHED: exitcodes.CRASHED,
        table.Verdict.BUSY: exitcodes.BUSY,
        table.Verdict.RUNNING: None,
    }
    assert (exitcodes.USAGE, exitcodes.CREDENTIALS, exitcodes.BUSY) == (2, 3, 6)
    done = run_cli(["--help"], cwd=".", env={})
    for line in ("5    aborted by a failure budget", "70   internal error", "70 > 4 > 130 > 5"):
        assert line in done.stdout


def test_a_failed_vps_exits_1_and_runs_status_report_agree(sim: Simulator, tmp_path: Path) -> None:
    sim.set_install_outcome(sim.vps_ids[1], "fail")
    path = fleet(sim, tmp_path, 3, rollout=BOTH_BUDGETS_OPEN)
    slow_failing(path)
    code, out, err = apply(sim, path, "--quiet")
    assert code == 1, out + err
    run_id = last_run(tmp_path)
    _run, status, *_, ready, failed, doubt, exit_code, _ = runs_line(sim, tmp_path, run_id)
    assert (status, ready, failed, doubt, exit_code) == ("failed", "2", "1", "0", "1")
    code, out, _ = cli(sim, tmp_path, "status", run_id)
    assert "verdict: failed (exit code 1)" in out
    data = report_json(sim, tmp_path, run_id)
    assert (data["status"], data["verdict"], data["exit_code"]) == ("failed", "failed", 1)


def test_failed_and_in_doubt_exit_4_and_so_does_resume_of_the_finished_run(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.set_install_outcome(sim.vps_ids[1], "fail")
    sim.set_faults(script={"set/reinstall": ["lost"]}, kvm_id=sim.vps_ids[2])
    path = fleet(sim, tmp_path, 3, rollout=BOTH_BUDGETS_OPEN)
    slow_failing(path)
    code, out, err = apply(sim, path, "--quiet")
    assert code == 4, out + err  # in doubt outranks the failure
    assert "1 VPS(es) in doubt" in err
    run_id = last_run(tmp_path)
    assert runs_line(sim, tmp_path, run_id)[1] == "in_doubt"
    sent = received(sim)
    code, out, err = cli(sim, tmp_path, "resume", run_id, "--quiet")
    assert code == 4, out + err  # nothing left to do, and the run still ended in doubt
    assert "nothing left to do" in out
    assert received(sim) == sent
    data = report_json(sim, tmp_path, run_id)
    assert (data["verdict"], data["exit_code"]) == ("in-doubt", 4)


def test_a_run_refused_as_busy_is_recorded_busy_and_resumes_once_the_locks_are_free(
    sim: Simulator, tmp_path: Path
) -> None:
    """Another live run holds one of the VPSes: apply exits 6 and nothing is sent; the run is
    recorded ``busy``, so runs, status and report all say busy / 6 (not aborted / 5); resume
    is refused the same way (the run stays busy) while the other run holds it, and once the
    lock is free resume runs it to the end."""
    path = fleet(sim, tmp_path, 3)
    journal_file(tmp_path).parent.mkdir(parents=True, exist_ok=True)
    holder = Journal(journal_file(tmp_path))  # another run of this (live) process
    try:
        other = anyio.run(_hold, holder, sim.vps_ids[1])
        code, out, err = apply(sim, path, "--quiet")
        assert code == exitcodes.BUSY, out + err
        assert "busy: run " in err
        run_id = last_run(tmp_path)
        assert run_id != other
        _run, status, *_, exit_code, _ = runs_line(sim, tmp_path, run_id)
        assert (status, exit_code) == ("busy", "6")
        code, out, _ = cli(sim, tmp_path, "status", run_id)
        assert "verdict: busy (exit code 6)" in out
        data = report_json(sim, tmp_path, run_id)
        assert (data["status"], data["verdict"], data["exit_code"]) == ("busy", "busy", 6)
        code, out, err = cli(sim, tmp_path, "resume", run_id, "--quiet")
        assert code == exitcodes.BUSY, out + err
        assert runs_line(sim, tmp_path, run_id)[1] == "busy"  # refused again: as it was
        assert received(sim) == 0  # nothing was sent
        anyio.run(holder.release_locks, other)
    finally:
        anyio.run(holder.close)
    code, out, err = cli(sim, tmp_path, "resume", run_id, "--quiet")
    assert code == exitcodes.OK, out + err
    assert [sim.counters.reinstall_accepted[k] for k in sim.vps_ids[:3]] == [1, 1, 1]
    data = report_json(sim, tmp_path, run_id)
    assert (data["status"], data["verdict"], data["exit_code"]) == ("done", "ok", 0)


async def _hold(journal: Journal, kvm_id: str) -> str:
    """Record a run that holds ``kvm_id``'s lock (this process: live) and return its id."""
    run_id = await journal.create_run(
        manifest_path="other.yaml", manifest_sha256="a" * 64, plan_sha256="b" * 64, options={}
    )
    await journal.add_targets(run_id, [TargetSpec(kvm_id, 1, 0, "debian-12", "other")])
    await journal.acquire_locks(run_id, [kvm_id])
    return run_id


def test_refused_credentials_exit_3(sim: Simulator, tmp_path: Path) -> None:
    path = fleet(sim, tmp_path, 2)
    env = {**env_for(sim), "EDIS_PASSWORD": "not-the-password"}
    done = run_cli(["apply", str(path), "--quiet"], cwd=tmp_path, env=env)
    assert done.returncode == 3, done.stderr
    assert "not-the-password" not in done.stdout + done.stderr
    assert received(sim) == 0


def test_a_plan_for_another_endpoint_is_refused_before_any_connection(
    sim: Simulator, tmp_path: Path
) -> None:
    path = fleet(sim, tmp_path, 2)
    done = run_cli(["plan", str(path), "-o", "plan.json"], cwd=tmp_path, env=env_for(sim))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "plan.json").read_text())["endpoint"]["session_url"] == (
        sim.session_url
    )
    requests = sum(sim.counters.requests.values())
    other = "https://127.0.0.1:9/session"
    code, _, err = apply(sim, path, "--plan", "plan.json", "--session-url", other)
    assert code == 2
    assert f"was checked against {sim.session_url}" in err
    assert "Nothing was sent" in err
    assert sum(sim.counters.requests.values()) == requests  # not even a login
    code, _, err = apply(sim, path, "--plan", "plan.json", "--quiet")
    assert code == 0, err


def test_retry_failed_sends_every_failed_vps_in_one_wave(sim: Simulator, tmp_path: Path) -> None:
    failing = sim.vps_ids[2:4]
    for kvm_id in failing:
        sim.set_install_outcome(kvm_id, "fail")
    rollout = "  concurrency: 10\n  failure_budget: {wave: 0, run: 100%}\n"
    path = fleet(sim, tmp_path, 4, rollout=rollout)
    slow_failing(path)
    code, out, err = apply(sim, path, "--quiet")
    assert code == 5, out + err  # wave 2's budget of 0 tripped: aborted by a budget
    run_id = last_run(tmp_path)
    assert [sim.counters.reinstall_received[k] for k in failing] == [1, 1]
    code, out, err = cli(sim, tmp_path, "retry-failed", run_id, "--quiet")
    # One wave under the run's budget: both are sent again (a canary wave of one with a
    # budget of 0 would have skipped the second), both fail again: some VPSes failed.
    assert code == 1, out + err
    assert [sim.counters.reinstall_received[k] for k in failing] == [2, 2]
    code, out, _ = cli(sim, tmp_path, "retry-failed", "--help")
    assert "ONE wave" in " ".join(out.split())


# --------------------------------------------------------------------------- the boundary


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats every 50 ms instead of 30 s: a lock taken over is seen at once."""
    monkeypatch.setattr("orchestrator.run.execute.HEARTBEAT_S", 0.05)


def _when_accepted(sim: Simulator, count: int, then: Callable[[], None]) -> threading.Thread:
    def watch() -> None:
        wait_until("reinstalls accepted", lambda: sum(
            sim.counters.reinstall_accepted.values()) >= count)  # fmt: skip
        then()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("fast_heartbeat")
@pytest.mark.parametrize("debug", [False, True])
def test_a_lock_lost_mid_run_crashes_70_recorded_and_resumable(
    make_thread_sim: ThreadSims, tmp_path: Path, debug: bool
) -> None:
    with make_thread_sim(vps_count=8, time_scale=0.003) as sim:
        path = fleet(sim, tmp_path, 8, rollout="  concurrency: 2\n")

        def take_over() -> None:
            # Another process (a dead one, so resume may take it back) now holds the locks.
            db = sqlite3.connect(journal_file(tmp_path), timeout=30)
            with db:
                db.execute("UPDATE locks SET pid = 999999999")
            db.close()

        watcher = _when_accepted(sim, 2, take_over)
        argv = ["--debug"] if debug else []
        done = run_cli([*argv, "apply", str(path), "--quiet"], cwd=tmp_path, env=env_for(sim))
        watcher.join(timeout=60)
        assert done.returncode == 70, done.stderr
        run_id = last_run(tmp_path)
        assert "a lock of this run was taken over by another process" in done.stderr
        assert "nothing was sent without a durable intent" in done.stderr
        assert f"resume with: edis-fleet resume {run_id}" in done.stderr
        assert ("Traceback" in done.stderr) is debug
        assert "ExceptionGroup" not in done.stderr or debug
        ((status, error),) = rows(tmp_path, "SELECT status, error FROM runs")
        assert status == "crashed"
        # Seen by the heartbeat, or by the journal refusing the next intent: either way the
        # lock was lost and nothing more was sent.
        assert "LockedError" in str(error) or "not by this process" in str(error)
        assert runs_line(sim, tmp_path, run_id)[-2] == "70"
        code, out, err = cli(sim, tmp_path, "resume", run_id, "--quiet")
        assert code in (0, 4), out + err  # 4 when a cut-off send is left in doubt
        states = dict(rows(tmp_path, "SELECT kvm_id, state FROM targets"))
        assert set(states.values()) <= {"ready", "in_doubt"}
        assert code == (4 if "in_doubt" in states.values() else 0)
        for kvm_id in sim.vps_ids:
            assert sim.counters.reinstall_received[kvm_id] <= 1  # report: never a resend


@pytest.fixture
def full_disk() -> Iterator[threading.Event]:
    """Set the event and the journal's next writes fail as on a full disk; clear it to free
    the space again."""
    full = threading.Event()

    def fault() -> None:
        if full.is_set():
            raise sqlite3.OperationalError("database or disk is full")

    Store.write_fault = fault
    try:
        yield full
    finally:
        Store.write_fault = None


def test_a_full_disk_mid_run_is_told_as_such_and_resume_completes(
    make_thread_sim: ThreadSims, tmp_path: Path, full_disk: threading.Event
) -> None:
    with make_thread_sim(vps_count=8, time_scale=0.003) as sim:
        rollout = "  concurrency: 2\n  in_doubt: resend-after-window\n  in_doubt_window: 1s\n"
        path = fleet(sim, tmp_path, 8, rollout=rollout)
        watcher = _when_accepted(sim, 3, full_disk.set)
        code, out, err = apply(sim, path, "--quiet")
        watcher.join(timeout=60)
        assert code == 70, out + err
        assert "the disk of the journal is full" in err
        assert "already sent and accepted:" in err
        assert "nothing was sent without a durable intent" in err
        assert "resume with: edis-fleet resume" in err
        assert "refused" not in err
        sent = received(sim)
        assert sent < 8  # it stopped sending
        full_disk.clear()
        run_id = last_run(tmp_path)
        code, out, err = cli(sim, tmp_path, "resume", run_id, "--quiet")
        assert code == 0, out + err
        states = dict(rows(tmp_path, "SELECT kvm_id, state FROM targets"))
        assert set(states.values()) == {"ready"}
        for kvm_id in sim.vps_ids:
            # At most the one resend of an in-doubt send (an outcome the full disk lost).
            assert 1 <= sim.counters.reinstall_accepted[kvm_id] <= 2


# --------------------------------------------------------------------------- resume timing


def test_a_soak_cut_short_is_served_in_full_on_resume(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    soak = 2.0
    with make_thread_sim(vps_count=3, time_scale=0.002) as sim:
        path = fleet(sim, tmp_path, 3, rollout=f"  soak: {soak:g}s\n")
        events = tmp_path / "events.ndjson"

        def stop_in_the_soak() -> None:
            def wave_1_ready() -> bool:
                try:
                    return bool(rows(tmp_path, "SELECT 1 FROM runs WHERE waves_json != '{}'"))
                except sqlite3.OperationalError:  # the journal is being created
                    return False

            wait_until("wave 1 ready", wave_1_ready)
            os.kill(os.getpid(), signal.SIGINT)

        watcher = threading.Thread(target=stop_in_the_soak, daemon=True)
        watcher.start()
        code, out, err = apply(sim, path, "--quiet", "--events", str(events))
        watcher.join(timeout=60)
        assert code == 130, out + err
        run_id = last_run(tmp_path)
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        assert lines
        assert {line["run_id"] for line in lines} == {run_id}
        assert received(sim) == 1  # the canary only: wave 2 waits for the soak
        code, out, err = cli(sim, tmp_path, "resume", run_id, "--log-format", "json")
        assert code == 0, out + err
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        progress = [p for p in lines if p.get("event") == "target_state"]
        assert progress
        assert all(p["hostname"] and p["run_id"] == run_id for p in progress)
        ((waves,),) = rows(tmp_path, "SELECT waves_json FROM runs")
        wave_1_ready = json.loads(str(waves))["1"]
        ((first_send,),) = rows(tmp_path, "SELECT min(sent_at) FROM targets WHERE wave = 2")
        assert float(str(first_send)) >= wave_1_ready + soak  # the whole soak, as recorded


def test_an_in_doubt_resend_is_recorded_once_and_never_repeated(
    sim: Simulator, tmp_path: Path
) -> None:
    target = sim.vps_ids[1]
    sim.set_faults(script={"set/reinstall": ["lost", "lost"]}, kvm_id=target)
    rollout = "  in_doubt: resend-after-window\n  in_doubt_window: 0.2s\n" + BOTH_BUDGETS_OPEN
    path = fleet(sim, tmp_path, 2, rollout=rollout)
    code, out, err = apply(sim, path, "--quiet")
    # The first send and its one resend were both lost: in doubt, and not sent a third time.
    assert code == 4, out + err
    assert sim.counters.reinstall_received[target] == 2
    ((decided, resent, state),) = rows(
        tmp_path, "SELECT resend_decided_at, resent_at, state FROM targets WHERE kvm_id = ?",
        target,
    )  # fmt: skip
    assert decided is not None
    assert resent is not None
    assert state == "in_doubt"
    code, out, err = cli(sim, tmp_path, "resume", last_run(tmp_path), "--quiet")
    assert code == 4, out + err
    assert sim.counters.reinstall_received[target] == 2


async def test_the_journal_refuses_a_second_resend(tmp_path: Path) -> None:
    from orchestrator.errors import JournalError
    from orchestrator.journal import Journal, TargetSpec
    from orchestrator.model import TargetState

    async with await Journal.open(tmp_path / "j.sqlite") as journal:
        run_id = await journal.create_run(manifest_path="f", manifest_sha256="0", plan_sha256="0")
        await journal.add_targets(run_id, [TargetSpec("k", 1, 0, "img", "host", None)])
        await journal.acquire_locks(run_id, ["k"])
        await journal.write_intents(run_id, ["k"])
        await journal.record_outcome(run_id, "k", TargetState.IN_DOUBT, durable=True)
        await journal.write_intents(run_id, ["k"], resend=True)
        await journal.record_outcome(run_id, "k", TargetState.IN_DOUBT, durable=True)
        with pytest.raises(JournalError, match="already resent once"):
            await journal.write_intents(run_id, ["k"], resend=True)
        (target,) = await journal.targets(run_id)
        assert target.sends == 2
        assert target.resent_at is not None
    await anyio.lowlevel.checkpoint()


def test_resume_of_a_crashed_run_with_nothing_left_settles_it(
    sim: Simulator, tmp_path: Path
) -> None:
    path = fleet(sim, tmp_path, 2)
    code, out, err = apply(sim, path, "--quiet")
    assert code == 0, out + err
    run_id = last_run(tmp_path)
    # Crashed after its last VPS was done (say, the final write of the status failed).
    db = sqlite3.connect(journal_file(tmp_path))
    with db:
        db.execute("UPDATE runs SET status = 'crashed', error = 'disk full'")
    db.close()
    assert runs_line(sim, tmp_path, run_id)[1] == "crashed"
    code, out, err = cli(sim, tmp_path, "resume", run_id, "--quiet")
    assert code == 0, out + err
    assert "nothing left to do (done" in out
    assert runs_line(sim, tmp_path, run_id)[1] == "done"
    assert received(sim) == 2
