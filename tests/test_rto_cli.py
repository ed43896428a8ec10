"""The drill record from the command line: ``report --format html|markdown`` read from the
journal, and ``apply --rto`` / ``rollout.rto`` checked at the end of a run (exit code 7, and
failures or in-doubt VPSes taking precedence), and the same through the library API.
In-process against the simulator.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio

import orchestrator
from orchestrator import ReportFormat
from orchestrator.simulator import Simulator
from tests.cli_support import run_cli
from tests.conftest import SimFactory, ThreadSims
from tests.test_apply import apply, env_for, fleet
from tests.test_drill_record import parse
from tests.test_library import READINESS
from tests.test_plan import MARKER_ROOT, manifest, vps_lines
from tests.test_report import NASTY, record
from tests.test_resume import interrupted_run


def test_report_html_and_markdown_from_the_journal(tmp_path: Path) -> None:
    run, _, _ = anyio.run(record, tmp_path / "j.sqlite")
    out = tmp_path / "drill.html"
    env = {"PATH": "/usr/bin:/bin"}
    journal = str(tmp_path / "j.sqlite")
    done = run_cli(["report", run.id, "--journal", journal, "--format", "html", "-o", str(out)],
                   cwd=tmp_path, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert parse(out.read_text()).text("verdict") == "in-doubt"  # a failure and a doubt
    md = run_cli(["report", run.id, "--journal", journal, "--format", "markdown"], cwd=tmp_path,
                 env=env)  # fmt: skip
    assert md.returncode == 0
    assert md.stdout.startswith("## ⚠️ edis-fleet prod: in-doubt")
    assert NASTY not in md.stdout  # escaped, not raw


# --------------------------------------------------------------------------- the command


def _report(sim: Simulator, path: Path, fmt: str = "json") -> str:
    runs = run_cli(["runs"], cwd=path.parent, env=env_for(sim)).stdout.splitlines()
    run_id = runs[-1].split()[0]
    done = run_cli(["report", run_id, "--format", fmt], cwd=path.parent, env=env_for(sim))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_missed_rto_exits_7_and_every_report_says_so(
    thread_sim: Simulator, tmp_path: Path
) -> None:
    # A 1 s soak between the waves makes first send → last ready longer than a 1 s RTO.
    path = fleet(thread_sim, tmp_path, 3, rollout="  soak: 1s\n")
    code, out, err = apply(thread_sim, path, "--rto", "1s")
    assert code == 7, out + err
    assert "RTO missed" in err
    assert "RTO 1.0s: MISSED" in out
    data = json.loads(_report(thread_sim, path))
    assert (data["run"]["verdict"], data["run"]["rto_s"]) == ("rto-missed", 1.0)
    assert data["recovery"]["rto_met"] is False
    assert data["recovery"]["recovery_s"] > 1.0
    assert "⏱️ edis-fleet fleet: rto-missed" in _report(thread_sim, path, "markdown")
    assert 'id="verdict"' in _report(thread_sim, path, "html")


def test_the_manifest_rto_is_recorded_and_met(thread_sim: Simulator, tmp_path: Path) -> None:
    path = fleet(thread_sim, tmp_path, 2, rollout="  rto: 1h\n")
    code, out, err = apply(thread_sim, path)
    assert code == 0, out + err
    data = json.loads(_report(thread_sim, path))
    assert (data["run"]["rto_s"], data["recovery"]["rto_met"], data["run"]["verdict"]) == (
        3600.0, True, "ok",
    )  # fmt: skip


def test_in_doubt_takes_precedence_over_a_missed_rto(thread_sim: Simulator, tmp_path: Path) -> None:
    thread_sim.set_faults(script={"set/reinstall": ["lost"]})
    path = fleet(thread_sim, tmp_path, 3,
                 rollout="  soak: 1s\n  failure_budget: {wave: 1, run: 1}\n")  # fmt: skip
    code, out, err = apply(thread_sim, path, "--rto", "1s")
    assert code == 4, out + err
    assert json.loads(_report(thread_sim, path))["run"]["verdict"] == "in-doubt"


def test_a_bad_rto_is_a_usage_error(thread_sim: Simulator, tmp_path: Path) -> None:
    path = fleet(thread_sim, tmp_path, 1)
    code, _, err = apply(thread_sim, path, "--rto", "30")
    assert code == 2
    assert "--rto" in err
    assert sum(thread_sim.counters.reinstall_received.values()) == 0


async def test_the_library_records_an_rto_and_renders_the_record(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    async with make_sim(vps_count=2, time_scale=0.001) as sim:
        path = manifest(sim, tmp_path, vps_lines(sim, 2), extra="  rate: 200/s\n")
        path.write_text(path.read_text().replace("  readiness: {mode: api}\n", READINESS))
        env = {"EDIS_EMAIL": sim.email, "EDIS_PASSWORD": sim.password,
               "EDIS_ROOT_PASSWORD": MARKER_ROOT}  # fmt: skip
        journal = tmp_path / "journal.sqlite"
        outcome = await orchestrator.apply(path, journal=journal, env=env, rto_s=3600.0)
        assert outcome.run.options["rto_s"] == 3600.0
        md = await orchestrator.run_report(
            outcome.run_id, journal=journal, format=ReportFormat.MARKDOWN
        )
        assert md.startswith("## ✅ edis-fleet fleet: ok")
        assert "| RTO | 1h00m00s: met" in md
        page = await orchestrator.run_report(
            outcome.run_id, journal=journal, format=ReportFormat.HTML
        )
        assert parse(page).text("verdict") == "ok"
        for secret in (MARKER_ROOT, sim.password):
            assert secret not in md + page


def test_resume_judges_the_rto_recorded_with_the_run(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    with make_thread_sim(vps_count=4, time_scale=0.003) as sim:
        path = fleet(sim, tmp_path, 4, rollout="  concurrency: 1\n")
        # Installs take 0.9 s and wave 2 waits for the canary: the whole run needs > 1.8 s.
        run_id = interrupted_run(make_thread_sim, sim, path, "--rto", "1s")
        done = run_cli(["resume", run_id, "--quiet"], cwd=tmp_path, env=env_for(sim))
        assert done.returncode == 7, done.stderr
        assert "RTO missed" in done.stderr
        data = json.loads(
            run_cli(["report", run_id, "--format", "json"], cwd=tmp_path, env=env_for(sim)).stdout
        )
        assert (data["run"]["rto_s"], data["run"]["verdict"]) == (1.0, "rto-missed")
