"""Kill and resume at seeded random moments, under both in-doubt policies.

A 60-VPS ``apply`` runs as a real process (the kills are the point) against a simulator
served from a background thread; 5% of the reinstall answers are lost (the server processed
the request: the VPS is in doubt) and every answer waits 2-20 ms, so kills catch sends in
flight. The process is SIGKILLed at a seeded random moment — after a random delay, or after
a random number of further reinstalls reached the simulator — then ``resume`` runs and is
killed in turn, and a last ``resume`` (the real entry point again) runs to the end.

Promises, checked against the simulator's own counters and the journal:

- every VPS is accounted for: ready, or in doubt (the budgets are open, nothing fails);
- the final exit code and the run's status are those of the journal's totals (0 and
  ``done`` when all are ready, 4 and ``in_doubt`` otherwise), and ``report`` says the same;
- ``report``: no VPS was ever sent a second reinstall; ``resend-after-window``: at most one
  resend per VPS (two requests), however many kills, and no VPS is left stranded with a
  decided resend that was never sent.

``make soak`` runs a bigger campaign (``tests/soak/soak.py``, check ``kills``).
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.simulator import Simulator
from tests.cli_support import cli_argv, process_env, run_cli, run_cli_process
from tests.conftest import ThreadSims
from tests.test_apply import env_for, fleet

pytestmark = pytest.mark.subprocess

FLEET = 60
KILLS = 3
CONCURRENCY = 10


@dataclass
class Figures:
    """What one campaign did: kills, VPSes, resends, in doubt at the end, duplicates (VPSes
    that received a second reinstall), the final exit code."""

    policy: str
    kills: int
    vpses: int
    resends: int
    in_doubt: int
    duplicates: int
    exit_code: int


def _rows(journal: Path, sql: str) -> list[tuple[object, ...]]:
    if not journal.exists():
        return []
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=30)
    try:
        return list(db.execute(sql))
    except sqlite3.OperationalError:  # the journal is being created
        return []
    finally:
        db.close()


def _received(sim: Simulator) -> int:
    return sum(sim.counters.reinstall_received.values())


def _kill_at_random(proc: subprocess.Popen[bytes], sim: Simulator, rng: random.Random) -> bool:
    """Wait for a seeded random moment and SIGKILL ``proc``; False if it ended first."""
    if rng.random() < 0.4:
        deadline = time.monotonic() + rng.uniform(0.3, 2.0)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
    else:
        target = _received(sim) + rng.randint(1, 25)
        while _received(sim) < target and proc.poll() is None:
            time.sleep(0.01)
    if proc.poll() is not None:
        return False
    proc.kill()
    proc.wait(timeout=60)
    return True


def campaign(sims: ThreadSims, tmp: Path, policy: str, seed: int, kills: int) -> Figures:
    """Kill and resume ``kills`` times, then resume to the end; check the promises."""
    rng = random.Random(seed)
    with sims(vps_count=FLEET, time_scale=0.002) as sim:
        sim.set_faults({"lost_response": 0.05}, endpoint="set/reinstall", latency=(0.002, 0.02))
        rollout = (
            f"  concurrency: {CONCURRENCY}\n  failure_budget: {{wave: 100%, run: 100%}}\n"
            f"  in_doubt: {policy}\n  in_doubt_window: 1s\n"
        )
        path = fleet(sim, tmp, FLEET, rollout=rollout)
        journal = tmp / ".edis-fleet" / "journal.sqlite"
        env = process_env(env_for(sim))
        done_kills = 0
        for step in range(kills):
            run = _rows(journal, "SELECT id FROM runs")
            command = (
                ["resume", str(run[0][0]), "--quiet"]
                if run
                else ["apply", str(path), "--yes", "--quiet"]
            )
            with (tmp / f"step-{step}.log").open("wb") as log:
                proc = subprocess.Popen(
                    cli_argv(*command), cwd=tmp, env=env, stdout=log, stderr=log
                )
                try:
                    killed = _kill_at_random(proc, sim, rng)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait(timeout=60)
            if not killed:
                break
            done_kills += 1
        run = _rows(journal, "SELECT id FROM runs")
        if run:
            last = run_cli_process(["resume", str(run[0][0]), "--quiet"], cwd=tmp, env=env_for(sim))
        else:
            last = run_cli_process(
                ["apply", str(path), "--yes", "--quiet"], cwd=tmp, env=env_for(sim)
            )
            run = _rows(journal, "SELECT id FROM runs")
        run_id = str(run[0][0])
        assert "Traceback" not in last.stderr, last.stderr
        shown = run_cli(["report", run_id, "--format", "json"], cwd=tmp, env=env_for(sim))
        report = json.loads(shown.stdout)
        targets = {t["kvm_id"]: t["state"] for t in report["targets"]}
        received = {k: sim.counters.reinstall_received[k] for k in sim.vps_ids}
        accepted = {k: sim.counters.reinstall_accepted[k] for k in sim.vps_ids}

        # Every VPS accounted for.
        assert set(targets) == set(sim.vps_ids)
        assert set(targets.values()) <= {"ready", "in_doubt"}, targets
        doubt = sum(1 for s in targets.values() if s == "in_doubt")
        # Exit code and status from the journal's totals, the same in the report.
        assert last.returncode == (4 if doubt else 0), last.stderr
        assert report["run"]["exit_code"] == last.returncode
        assert report["run"]["status"] == ("in_doubt" if doubt else "done")
        # Resends: never under report, at most one per VPS under resend-after-window.
        most = 1 if policy == "report" else 2
        assert max(received.values()) <= most, received
        assert max(accepted.values()) <= most, accepted
        for kvm_id, state in targets.items():
            if state == "ready":
                assert accepted[kvm_id] >= 1, kvm_id
        resent = _rows(journal, "SELECT kvm_id FROM targets WHERE resent_at IS NOT NULL")
        stranded = _rows(
            journal,
            "SELECT kvm_id FROM targets WHERE state = 'in_doubt'"
            " AND resend_decided_at IS NOT NULL AND resent_at IS NULL",
        )
        if policy == "report":
            assert not resent
        assert not stranded, stranded
        return Figures(
            policy=policy,
            kills=done_kills,
            vpses=FLEET,
            resends=len(resent),
            in_doubt=doubt,
            duplicates=sum(1 for n in received.values() if n > 1),
            exit_code=last.returncode,
        )


@pytest.mark.parametrize(("policy", "seed"), [("report", 11), ("resend-after-window", 12)])
def test_kill_and_resume_at_random_moments_accounts_for_every_vps(
    make_thread_sim: ThreadSims, tmp_path: Path, policy: str, seed: int
) -> None:
    figures = campaign(make_thread_sim, tmp_path, policy, seed, KILLS)
    print(figures)  # the figures of the campaign, shown with -s
