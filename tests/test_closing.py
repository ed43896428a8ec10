"""The end of a run leads with the verdict (report/closing.py through ``apply``): the last
lines are the status, counts, failures with reasons (capped), and the next command; the
per-VPS report only with ``--details``; nothing wider than 80 columns."""

from __future__ import annotations

from pathlib import Path

from orchestrator.report.closing import closing_summary
from orchestrator.report.contract import judge_records
from orchestrator.simulator import Simulator
from tests.conftest import ThreadSims
from tests.test_apply import apply, fleet
from tests.test_report import NASTY, hide, record

LONG_NAME = "web-frontend-0042.eu-central-1.production.example.internal"
BUDGET = "  failure_budget: {wave: 100%, run: 100%}\n"


def _failing(sim: Simulator, tmp: Path, count: int, failing: int) -> Path:
    for kvm_id in sim.vps_ids[:failing]:
        sim.set_install_outcome(kvm_id, "fail")
    path = fleet(sim, tmp, count, rollout=BUDGET)
    text = path.read_text().replace("hostname: host-0}", f"hostname: {LONG_NAME}}}")
    # A failed install is seen when the deadline passes: keep it short.
    text = text.replace("deadline: 1m}", "deadline: 2s}")
    path.write_text(text)
    return path


def test_a_failed_run_ends_with_its_verdict_failures_and_next_command(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    with make_thread_sim(vps_count=14, time_scale=0.002) as sim:
        code, out, err = apply(sim, _failing(sim, tmp_path, 14, failing=12), "--yes")
    assert code == 1, out + err
    lines = out.rstrip("\n").splitlines()
    run_line = next(line for line in lines if line.startswith("edis-fleet run "))
    run_id = run_line.split()[2].rstrip(":")
    assert run_line == f"edis-fleet run {run_id}: failed (exit 1)"
    assert "  14 VPS(es): 2 ready, 12 failed" in lines
    assert "failed (12):" in lines
    listed = [line for line in lines if line.startswith("  kvm_")]
    assert len(listed) == 10  # capped
    reasons = [line for line in lines if "not ready: install failed" in line]
    assert len(reasons) == 10, lines
    # A long host name puts the reason on its own line; a long reason is cut at 80.
    long_one = lines.index(f"  {sim.vps_ids[0]} {LONG_NAME}:")
    assert lines[long_one + 1].startswith("      not ready: install failed")
    assert any(line.endswith("…") for line in reasons)
    assert f"  and 2 more (edis-fleet report {run_id})" in lines
    # The next command and where the details are: the very last lines.
    assert lines[-2:] == [
        f"next: edis-fleet retry-failed {run_id}",
        f"details: edis-fleet report {run_id}",
    ]
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    # No per-VPS table without --details.
    assert "manifest sha256" not in out


def test_details_prints_the_per_vps_report_before_the_verdict(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    with make_thread_sim(vps_count=3, time_scale=0.002) as sim:
        code, out, err = apply(sim, _failing(sim, tmp_path, 3, failing=0), "--details")
    assert code == 0, out + err
    assert "manifest sha256" in out
    tail = out[out.rindex("manifest sha256") :]
    assert "  every selected VPS is back" in tail
    assert tail.rstrip("\n").splitlines()[-1].startswith("details: edis-fleet report ")
    assert "next: edis-fleet" not in tail  # nothing left to do


def test_quiet_prints_no_verdict(make_thread_sim: ThreadSims, tmp_path: Path) -> None:
    with make_thread_sim(vps_count=2, time_scale=0.002) as sim:
        code, out, err = apply(sim, _failing(sim, tmp_path, 2, failing=0), "--quiet")
    assert code == 0, err
    assert out == ""


# --------------------------------------------------------------------------- from records


async def test_in_doubt_and_failed_vpses_with_reasons_and_what_to_do(tmp_path: Path) -> None:
    run, targets, attempts = await record(tmp_path / "journal.sqlite")
    tally = judge_records(run.status, targets)
    text = closing_summary(run, targets, tally, attempts, redact=hide)
    lines = text.splitlines()
    assert lines[1] == f"edis-fleet run {run.id}: in_doubt (exit 4)"
    assert "  6 VPS(es): 3 ready, 1 failed, 1 in doubt, 1 skipped" in lines
    assert f"  d host-d: {hide(NASTY)}" in lines
    assert "  e host-e: read timeout" in lines
    assert "hunter2" not in text
    # In doubt first: a check by hand, never a command that could wipe twice; then the
    # failed ones' retry.
    flat = " ".join(text.split())
    assert "next: check the 1 in-doubt VPS(es) by hand before anything else" in flat
    assert lines[-2:] == [
        f"next: edis-fleet retry-failed {run.id}",
        f"details: edis-fleet report {run.id}",
    ]
    assert all(len(line) <= 80 for line in lines)


async def test_an_interrupted_run_says_resume(tmp_path: Path) -> None:
    run, targets, attempts = await record(tmp_path / "journal.sqlite", interrupted=True)
    tally = judge_records(run.status, targets)
    text = closing_summary(run, targets, tally, attempts, aborted="wave 1 failure budget (0)")
    assert f"next: edis-fleet resume {run.id}" in text
    assert "  stopped early: wave 1 failure budget (0)\n" in text


async def test_the_cap_and_a_narrow_terminal(tmp_path: Path) -> None:
    run, targets, attempts = await record(tmp_path / "journal.sqlite")
    tally = judge_records(run.status, targets)
    text = closing_summary(run, targets, tally, attempts, width=40, cap=0)
    assert "  and 1 more (edis-fleet report" in text
    assert all(len(line) <= 40 for line in text.splitlines() if "edis-fleet" not in line)
