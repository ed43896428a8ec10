"""The end of a run leads with the verdict (report/closing.py through ``apply``): the last
lines are the status, counts, failures with reasons (capped), and the next command; the
per-VPS report only with ``--details``; nothing wider than 80 columns."""

from __future__ import annotations

from pathlib import Path

from orchestrator.simulator import Simulator
from tests.conftest import ThreadSims
from tests.test_apply import apply, fleet

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
