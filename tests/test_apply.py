"""``edis-fleet apply`` end to end against the simulator.

The command runs in-process (``main(argv)`` in the test's thread) and the simulator serves
from a background thread. The SIGINT drain of a real process is tested with the locks, in
tests/test_resume.py. Every test checks the simulator's counters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.simulator import Simulator
from tests.cli_support import run_cli
from tests.conftest import ThreadSims
from tests.test_plan import MARKER_ROOT, manifest

FAST = """\
  readiness: {mode: api, min_install: 0.2s, poll_interval: 0.1s, deadline: 1m}
"""


def fleet(
    sim: Simulator,
    tmp: Path,
    count: int,
    *,
    rollout: str = "",
    extra_vps: str = "",
    first: int = 0,
) -> Path:
    lines = [
        f"  - {{id: {kvm_id}, hostname: host-{i}}}"
        for i, kvm_id in enumerate(sim.vps_ids[first : first + count])
    ]
    # The default 5 requests/s would make the runs here wait on the rate limit, not work.
    if "rate:" not in rollout:
        rollout += "  rate: 200/s\n"
    path = manifest(sim, tmp, "\n".join(lines) + extra_vps, extra=rollout)
    text = path.read_text().replace("  readiness: {mode: api}\n", FAST)
    path.write_text(text)
    return path


def env_for(sim: Simulator) -> dict[str, str]:
    return {
        "EDIS_EMAIL": sim.email,
        "EDIS_PASSWORD": sim.password,
        "EDIS_ROOT_PASSWORD": MARKER_ROOT,
        "PATH": "/usr/bin:/bin",
    }


@pytest.fixture
def sim(thread_sim: Simulator) -> Simulator:
    """The commands run in-process: the simulator serves from a background thread."""
    return thread_sim


def apply(
    sim: Simulator, path: Path, *args: str, stdin: str = "", tty: bool = False
) -> tuple[int, str, str]:
    """``edis-fleet apply PATH ARGS`` in-process, in the manifest's folder."""
    done = run_cli(
        ["apply", str(path), *args], cwd=path.parent, env=env_for(sim), stdin=stdin, tty=tty
    )
    return done.returncode, done.stdout, done.stderr


def received(sim: Simulator) -> int:
    return sum(sim.counters.reinstall_received.values())


def test_healthy_run_reinstalls_each_vps_once(make_thread_sim: ThreadSims, tmp_path: Path) -> None:
    with make_thread_sim(vps_count=6, time_scale=0.002) as sim:
        path = fleet(sim, tmp_path, 6)
        code, out, err = apply(sim, path)
        assert code == 0, err
        assert "done" in out
        for kvm_id in sim.vps_ids:
            assert sim.counters.reinstall_accepted[kvm_id] == 1
        journal = tmp_path / ".edis-fleet" / "journal.sqlite"
        assert journal.exists()
        assert journal.stat().st_mode & 0o777 == 0o600
        for produced in (out, err, journal.read_bytes().decode("latin-1")):
            assert MARKER_ROOT not in produced
            assert sim.password not in produced


def test_guard_refuses_a_large_run_without_a_terminal_or_yes(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    with make_thread_sim(vps_count=12, time_scale=0.002) as sim:
        path = fleet(sim, tmp_path, 12)
        code, _, err = apply(sim, path)
        assert code == 2
        assert "would wipe 12 VPS(es)" in err
        assert "--confirm-count 12" in err
        code, _, err = apply(sim, path, "--confirm-count", "11")
        assert code == 2
        assert "does not match" in err
        assert sum(sim.counters.requests.values()) == 0
        code, _, err = apply(sim, path, "--confirm-count", "12")
        assert code == 0, err
        assert received(sim) == 12


def test_a_protected_vps_needs_confirmation(sim: Simulator, tmp_path: Path) -> None:
    path = fleet(
        sim,
        tmp_path,
        1,
        extra_vps=f"\n  - {{id: {sim.vps_ids[4]}, hostname: guarded, protected: true}}",
    )
    code, _, err = apply(sim, path, "--include-protected")
    assert code == 2
    assert "1 of them protected" in err
    assert sum(sim.counters.requests.values()) == 0


def test_a_stale_plan_is_refused(sim: Simulator, tmp_path: Path) -> None:
    path = fleet(sim, tmp_path, 2)
    done = run_cli(["plan", str(path), "-o", "plan.json"], cwd=tmp_path, env=env_for(sim))
    assert done.returncode == 0, done.stderr
    template = tmp_path / "templates" / "base.yaml.j2"
    template.write_text(template.read_text() + "\n# edited after the plan\n")
    code, _, err = apply(sim, path, "--plan", "plan.json")
    assert code == 2
    assert "stale" in err
    assert received(sim) == 0


def test_an_image_withdrawn_between_plan_and_apply_stops_before_any_wipe(
    sim: Simulator, tmp_path: Path
) -> None:
    path = fleet(sim, tmp_path, 3)
    done = run_cli(["plan", str(path), "-o", "plan.json"], cwd=tmp_path, env=env_for(sim))
    assert done.returncode == 0, done.stderr
    sim.set_images(sim.vps_ids[1], ["debian-bullseye"])
    code, _, err = apply(sim, path, "--plan", "plan.json")
    assert code == 2
    assert "not offered" in err
    assert "nothing was sent" in err
    assert received(sim) == 0


def test_a_suspended_vps_stops_the_run_before_any_wipe(sim: Simulator, tmp_path: Path) -> None:
    sim.set_suspended(sim.vps_ids[2], True)
    code, _, err = apply(sim, fleet(sim, tmp_path, 3))
    assert code == 2
    assert "suspended" in err
    assert received(sim) == 0


def test_budget_tripping_in_the_canary_aborts_with_exit_5(sim: Simulator, tmp_path: Path) -> None:
    sim.set_install_outcome(sim.vps_ids[0], "fail")
    path = fleet(sim, tmp_path, 4)
    path.write_text(path.read_text().replace("deadline: 1m", "deadline: 2s"))
    code, out, err = apply(sim, path)
    assert code == 5, out + err  # a budget's own code, never 3 (credentials refused)
    assert "wave 1 failure budget (0) exceeded" in err
    assert received(sim) == 1  # the canary only


def test_lost_response_is_reported_in_doubt_with_exit_4(sim: Simulator, tmp_path: Path) -> None:
    sim.set_faults(script={"set/reinstall": ["lost"]})
    code, out, _ = apply(
        sim, fleet(sim, tmp_path, 3, rollout="  failure_budget: {wave: 1, run: 1}\n")
    )
    assert code == 4, out
    assert "in_doubt" in out
    assert sim.counters.reinstall_received[sim.vps_ids[0]] == 1  # never resent


def test_flaky_profile_every_vps_once_or_reported(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    with make_thread_sim(vps_count=10, time_scale=0.002, profile="flaky", seed=7) as sim:
        path = fleet(sim, tmp_path, 10, rollout="  failure_budget: {wave: 100%, run: 100%}\n")
        code, out, err = apply(sim, path)
        assert code in (0, 1, 4), out + err
        journal = tmp_path / ".edis-fleet" / "journal.sqlite"
        assert journal.exists()
        for kvm_id in sim.vps_ids:
            accepted = sim.counters.reinstall_accepted[kvm_id]
            if f"{kvm_id} in_doubt" in out:
                assert sim.counters.reinstall_received[kvm_id] == 1
            elif f"{kvm_id} failed" not in out:
                assert accepted == 1, (kvm_id, out)


def test_a_terminal_is_asked_to_type_the_count(make_thread_sim: ThreadSims, tmp_path: Path) -> None:
    """On a terminal, a guarded run lists its targets and goes ahead only on the typed count."""
    with make_thread_sim(vps_count=12, time_scale=0.002) as sim:
        path = fleet(sim, tmp_path, 12)
        code, _, err = apply(sim, path, stdin="11\n", tty=True)
        assert code == 2
        assert "this run would wipe 12 VPS(es):" in err
        assert f"  {sim.vps_ids[0]}  host-0  cloudinit_debian-bookworm" in err
        assert "type 12 to wipe them" in err
        assert "not confirmed. Nothing was sent." in err
        assert received(sim) == 0
        code, _, err = apply(sim, path, stdin="12\n", tty=True)
        assert code == 0, err
        assert received(sim) == 12


@pytest.mark.parametrize("flag", ["--only", "--limit"])
def test_plan_and_selection_flags_do_not_mix(sim: Simulator, tmp_path: Path, flag: str) -> None:
    path = fleet(sim, tmp_path, 1)
    (tmp_path / "plan.json").write_text(json.dumps({"content_hash": "x"}))
    value = "tag=web" if flag == "--only" else sim.vps_ids[0]
    code, _, err = apply(sim, path, "--plan", "plan.json", flag, value)
    assert code == 2
    assert "own selection" in err
