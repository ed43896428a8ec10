"""resume, retry-failed, runs, status, report and the per-VPS locks, through the CLI.

The commands run in-process against a simulator served from a background thread. An
interrupted run is made by sending SIGINT to this process once the simulator accepted a
reinstall (the run's own signal handler drains it); the lock test needs two processes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

import anyio
import pytest

from orchestrator.cli import exitcodes
from orchestrator.simulator import Simulator
from tests.cli_support import cli_argv, process_env, run_cli, running, wait_until
from tests.conftest import ThreadSims
from tests.test_apply import apply, env_for, fleet, received


@pytest.fixture
def sim(thread_sim: Simulator) -> Simulator:
    """The commands run in-process: the simulator serves from a background thread."""
    return thread_sim


def cli(sim: Simulator, cwd: Path, *args: str) -> tuple[int, str, str]:
    done = run_cli(args, cwd=cwd, env=env_for(sim))
    return done.returncode, done.stdout, done.stderr


def last_run(tmp: Path, *, first: bool = False) -> str:
    order = "ASC" if first else "DESC"
    db = sqlite3.connect(tmp / ".edis-fleet" / "journal.sqlite")
    try:
        query = f"SELECT id FROM runs ORDER BY started_at {order}, rowid {order} LIMIT 1"
        (run_id,) = db.execute(query).fetchone()
    finally:
        db.close()
    return str(run_id)


def interrupted_run(sims: ThreadSims, sim: Simulator, path: Path, *args: str) -> str:
    """Run apply in-process and SIGINT it after the first accepted reinstall; return the run
    id. The canary's install (0.9 s at ``time_scale=0.003``) keeps the run busy meanwhile:
    wave 2 waits for it to be ready."""

    returned = threading.Event()

    async def interrupt() -> None:
        with anyio.fail_after(60):
            while sum(sim.counters.reinstall_accepted.values()) == 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        if not returned.is_set():  # never a stray SIGINT for pytest itself
            os.kill(os.getpid(), signal.SIGINT)

    watcher = sims.portal.start_task_soon(interrupt)
    try:
        code, _, err = apply(sim, path, "--quiet", *args)
    finally:
        returned.set()
        watcher.cancel()
    assert code == 130, err
    return last_run(path.parent)


def test_resume_finishes_an_interrupted_run_without_sending_twice(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    with make_thread_sim(vps_count=8, time_scale=0.003) as sim:
        path = fleet(sim, tmp_path, 8, rollout="  concurrency: 1\n")
        run_id = interrupted_run(make_thread_sim, sim, path)
        before = dict(sim.counters.reinstall_received)
        code, out, _ = cli(sim, tmp_path, "status", run_id)
        assert code == 0
        assert "resume would: send" in out
        code, _, err = cli(sim, tmp_path, "resume", run_id, "--quiet")
        assert code == 0, err
        for kvm_id in sim.vps_ids:
            assert sim.counters.reinstall_received[kvm_id] == 1, kvm_id
            if before.get(kvm_id):
                assert sim.counters.reinstall_received[kvm_id] == before[kvm_id]
        code, out, _ = cli(sim, tmp_path, "resume", run_id)
        assert code == 0
        assert "nothing left to do" in out


def test_resume_refuses_a_changed_manifest_unless_forced(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    with make_thread_sim(vps_count=6, time_scale=0.003) as sim:
        path = fleet(sim, tmp_path, 6, rollout="  concurrency: 1\n")
        run_id = interrupted_run(make_thread_sim, sim, path)
        template = tmp_path / "templates" / "base.yaml.j2"
        template.write_text(template.read_text() + "\n# edited after the run\n")
        sent = received(sim)
        code, _, err = cli(sim, tmp_path, "resume", run_id, "--quiet")
        assert code == 2
        assert "user-data changed" in err
        assert received(sim) == sent
        code, _, err = cli(sim, tmp_path, "resume", run_id, "--quiet", "--force")
        assert code == 0, err
        assert all(n == 1 for n in sim.counters.reinstall_received.values())


def test_retry_failed_runs_only_the_failed_vpses(sim: Simulator, tmp_path: Path) -> None:
    failing = sim.vps_ids[2]
    sim.set_install_outcome(failing, "fail")
    path = fleet(sim, tmp_path, 4, rollout="  failure_budget: {wave: 100%, run: 100%}\n")
    path.write_text(path.read_text().replace("deadline: 1m", "deadline: 2s"))
    code, out, _ = apply(sim, path)
    assert code == 1, out
    run_id = last_run(tmp_path)
    sim.set_install_outcome(failing, "ok")
    code, out, err = cli(sim, tmp_path, "retry-failed", run_id, "--quiet")
    assert code == 0, err
    assert sim.counters.reinstall_received[failing] == 2
    for kvm_id in sim.vps_ids[:4]:
        if kvm_id != failing:
            assert sim.counters.reinstall_received[kvm_id] == 1
    code, out, _ = cli(sim, tmp_path, "runs")
    assert code == 0
    assert run_id in out
    assert len([line for line in out.splitlines() if line.startswith("2")]) == 2


def test_reports_from_the_journal(sim: Simulator, tmp_path: Path) -> None:
    path = fleet(sim, tmp_path, 3)
    code, _, _ = apply(sim, path, "--report-json", "r.json", "--junit", "r.xml")
    assert code == 0
    run_id = last_run(tmp_path)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["totals"]["ready"] == 3
    assert (tmp_path / "r.xml").read_text().count("<testcase") == 3
    code, out, _ = cli(sim, tmp_path, "report", run_id, "--format", "ndjson")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert {e["kvm_id"] for e in events} == set(sim.vps_ids[:3])
    code, out, _ = cli(sim, tmp_path, "report", run_id, "--format", "json")
    assert json.loads(out)["totals"] == report["totals"]
    code, _, err = cli(sim, tmp_path, "report", "no-such-run")
    assert code == 2
    assert "no-such-run" in err


@pytest.mark.subprocess
def test_sigint_drains_a_running_apply_whose_locks_refuse_a_second_run(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    """A real ``apply`` process: while it runs, a second apply of the same VPSes is refused
    (its locks name a live pid); then SIGINT drains it: exit 130, the resume command named,
    nothing sent twice and not everything sent."""
    # Installs take 15 s here and wave 2 waits for the canary: the run is busy throughout,
    # however slow the machine.
    with make_thread_sim(vps_count=8, time_scale=0.05) as sim:
        path = fleet(sim, tmp_path, 8, rollout="  concurrency: 1\n  rate: 2/s\n")
        first = subprocess.Popen(
            cli_argv("apply", str(path)),
            env=process_env(env_for(sim)),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(
                "a reinstall accepted",
                running(first, lambda: sum(sim.counters.reinstall_accepted.values()) > 0),
            )
            code, _, err = apply(sim, path, "--quiet")
            assert code == exitcodes.BUSY, err
            assert f"run {last_run(tmp_path, first=True)} holds" in err
            first.send_signal(signal.SIGINT)
            _, first_err = first.communicate(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        assert first.returncode == 130, first_err
        assert "draining: no new reinstall is sent" in first_err
        assert "edis-fleet resume" in first_err
        assert 1 <= received(sim) < 8
        assert all(n <= 1 for n in sim.counters.reinstall_received.values())


def test_resume_talks_to_the_endpoint_the_run_used(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    """A rehearsal started with --session-url must not be resumed against the manifest's
    (real) endpoint: resume reuses the recorded one."""
    with make_thread_sim(vps_count=6, time_scale=0.003) as sim:
        path = fleet(sim, tmp_path, 6, rollout="  concurrency: 1\n")
        path.write_text(
            path.read_text().replace(sim.session_url, "https://session.edisglobal.invalid")
        )
        run_id = interrupted_run(make_thread_sim, sim, path, "--session-url", sim.session_url)
        code, _, err = cli(sim, tmp_path, "resume", run_id, "--quiet")
        assert code == 0, err
        assert all(n == 1 for n in sim.counters.reinstall_received.values())
