"""resume, retry-failed, runs, status, report and the per-VPS locks, through the real CLI."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
from pathlib import Path

import anyio

from orchestrator.simulator import Simulator
from tests.conftest import SimFactory
from tests.test_apply import apply, env_for, fleet, received


async def cli(sim: Simulator, cwd: Path, *args: str) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "orchestrator", *args], env=env_for(sim), cwd=cwd, check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def last_run(tmp: Path, *, first: bool = False) -> str:
    order = "ASC" if first else "DESC"
    db = sqlite3.connect(tmp / ".edis-fleet" / "journal.sqlite")
    try:
        query = f"SELECT id FROM runs ORDER BY started_at {order}, rowid {order} LIMIT 1"
        (run_id,) = db.execute(query).fetchone()
    finally:
        db.close()
    return str(run_id)


async def interrupted_run(sim: Simulator, path: Path, *args: str) -> str:
    """Start apply, SIGINT it after the first accepted reinstall, return the run id."""
    async with await anyio.open_process(
        [sys.executable, "-m", "orchestrator", "apply", str(path), "--quiet", *args],
        env=env_for(sim),
        cwd=path.parent,
    ) as proc:
        with anyio.fail_after(30):
            while sum(sim.counters.reinstall_accepted.values()) == 0:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            await proc.wait()
    assert proc.returncode == 130
    return last_run(path.parent)


async def test_resume_finishes_an_interrupted_run_without_sending_twice(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    async with make_sim(vps_count=8, time_scale=0.01) as sim:
        path = fleet(sim, tmp_path, 8, rollout="  concurrency: 1\n  rate: 2/s\n")
        run_id = await interrupted_run(sim, path)
        before = dict(sim.counters.reinstall_received)
        code, out, _ = await cli(sim, tmp_path, "status", run_id)
        assert code == 0
        assert "resume would: send" in out
        code, _, err = await cli(sim, tmp_path, "resume", run_id, "--quiet")
        assert code == 0, err
        for kvm_id in sim.vps_ids:
            assert sim.counters.reinstall_received[kvm_id] == 1, kvm_id
            if before.get(kvm_id):
                assert sim.counters.reinstall_received[kvm_id] == before[kvm_id]
        code, out, _ = await cli(sim, tmp_path, "resume", run_id)
        assert code == 0
        assert "nothing left to do" in out


async def test_resume_refuses_a_changed_manifest_unless_forced(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    async with make_sim(vps_count=6, time_scale=0.01) as sim:
        path = fleet(sim, tmp_path, 6, rollout="  concurrency: 1\n  rate: 2/s\n")
        run_id = await interrupted_run(sim, path)
        template = tmp_path / "templates" / "base.yaml.j2"
        template.write_text(template.read_text() + "\n# edited after the run\n")
        sent = received(sim)
        code, _, err = await cli(sim, tmp_path, "resume", run_id, "--quiet")
        assert code == 2
        assert "user-data changed" in err
        assert received(sim) == sent
        code, _, err = await cli(sim, tmp_path, "resume", run_id, "--quiet", "--force")
        assert code == 0, err
        assert all(n == 1 for n in sim.counters.reinstall_received.values())


async def test_retry_failed_runs_only_the_failed_vpses(sim: Simulator, tmp_path: Path) -> None:
    failing = sim.vps_ids[2]
    sim.set_install_outcome(failing, "fail")
    path = fleet(sim, tmp_path, 4, rollout="  failure_budget: {wave: 100%, run: 100%}\n")
    path.write_text(path.read_text().replace("deadline: 1m", "deadline: 2s"))
    code, out, _ = await apply(sim, path)
    assert code == 1, out
    run_id = last_run(tmp_path)
    sim.set_install_outcome(failing, "ok")
    code, out, err = await cli(sim, tmp_path, "retry-failed", run_id, "--quiet")
    assert code == 0, err
    assert sim.counters.reinstall_received[failing] == 2
    for kvm_id in sim.vps_ids[:4]:
        if kvm_id != failing:
            assert sim.counters.reinstall_received[kvm_id] == 1
    code, out, _ = await cli(sim, tmp_path, "runs")
    assert code == 0
    assert run_id in out
    assert len([line for line in out.splitlines() if line.startswith("2")]) == 2


async def test_reports_from_the_journal(sim: Simulator, tmp_path: Path) -> None:
    path = fleet(sim, tmp_path, 3)
    code, _, _ = await apply(sim, path, "--report-json", "r.json", "--junit", "r.xml")
    assert code == 0
    run_id = last_run(tmp_path)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["totals"]["ready"] == 3
    assert (tmp_path / "r.xml").read_text().count("<testcase") == 3
    code, out, _ = await cli(sim, tmp_path, "report", run_id, "--format", "ndjson")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert {e["kvm_id"] for e in events} == set(sim.vps_ids[:3])
    code, out, _ = await cli(sim, tmp_path, "report", run_id, "--format", "json")
    assert json.loads(out)["totals"] == report["totals"]
    code, _, err = await cli(sim, tmp_path, "report", "no-such-run")
    assert code == 2
    assert "no-such-run" in err


async def test_a_second_run_on_the_same_vpses_is_refused(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    async with make_sim(vps_count=4, time_scale=0.05) as sim:
        path = fleet(sim, tmp_path, 2)
        first = await anyio.open_process(
            [sys.executable, "-m", "orchestrator", "apply", str(path), "--quiet"],
            env=env_for(sim),
            cwd=tmp_path,
        )
        async with first:
            with anyio.fail_after(30):
                while sum(sim.counters.reinstall_accepted.values()) == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            code, _, err = await apply(sim, path, "--quiet")
            assert code == 2
            assert "refused" in err
            assert f"run {last_run(tmp_path, first=True)} holds" in err
            first.send_signal(signal.SIGINT)
            with anyio.fail_after(30):
                await first.wait()
        assert all(n <= 1 for n in sim.counters.reinstall_received.values())


async def test_resume_talks_to_the_endpoint_the_run_used(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    """A rehearsal started with --session-url must not be resumed against the manifest's
    (real) endpoint: resume reuses the recorded one."""
    async with make_sim(vps_count=6, time_scale=0.01) as sim:
        path = fleet(sim, tmp_path, 6, rollout="  concurrency: 1\n  rate: 2/s\n")
        path.write_text(
            path.read_text().replace(sim.session_url, "https://session.edisglobal.invalid")
        )
        run_id = await interrupted_run(sim, path, "--session-url", sim.session_url)
        code, _, err = await cli(sim, tmp_path, "resume", run_id, "--quiet")
        assert code == 0, err
        assert all(n == 1 for n in sim.counters.reinstall_received.values())
