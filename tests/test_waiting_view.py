"""The live view says why the run waits and shows pre-flight (cli/waiting.py, cli/progress.py):
soaking with a countdown, the slowest VPS of a wave, 429 cool-down, session refreshes, a
failure budget about to trip; and ``apply`` shows pre-flight's progress."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.cli.progress import Mode, Progress
from orchestrator.clock import FakeClock
from orchestrator.model import TargetEvent, TargetState
from orchestrator.run.eta import EtaModel, plan_of
from orchestrator.run.phase import RunPhase
from orchestrator.run.stats import RunStats
from tests.conftest import ThreadSims
from tests.test_apply import apply, fleet

S = TargetState
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HOSTS = {f"kvm_{i}": f"vps-{i:03d}" for i in range(10)}


def _view(mode: Mode, clock: FakeClock, out: io.StringIO, **kwargs: Any) -> Progress:
    return Progress(4, {1: 2, 2: 2}, stream=out, mode=mode, clock=clock, hostnames=HOSTS, **kwargs)


def _texts(p: Progress) -> list[str]:
    return [r.text for r in p.waiting()]


def test_soaking_counts_down_and_the_plain_log_says_it_once() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = _view("plain", clock, out)
    p.phase = RunPhase(wave=1, soak_until=clock.time() + 300, soak_before=2)
    assert _texts(p) == ["soaking before wave 2: 5m00s left"]
    p.tick()
    clock.advance(60)
    assert _texts(p) == ["soaking before wave 2: 4m00s left"]
    p.tick()  # same reason, new countdown: no new line
    assert out.getvalue().count("waiting: soaking before wave 2") == 1
    assert "waiting: soaking before wave 2: 5m00s left\n" in out.getvalue()  # no model: no ETA
    p.phase.soak_until = None
    assert _texts(p) == []


def test_waiting_for_a_wave_names_the_slowest_vps() -> None:
    clock = FakeClock()
    p = _view("quiet", clock, io.StringIO())
    p.start()
    p.emit(TargetEvent("kvm_1", S.ACCEPTED, 1, clock.time()))
    clock.advance(30)
    p.emit(TargetEvent("kvm_2", S.ACCEPTED, 1, clock.time()))
    clock.advance(45)
    assert _texts(p) == ["2 VPS(es) of wave 1 to be ready; slowest vps-001, accepted 1m15s ago"]
    p.emit(TargetEvent("kvm_1", S.READY, 1, clock.time()))
    assert "slowest vps-002, accepted 45.0s ago" in _texts(p)[0]


def test_no_wait_is_claimed_while_the_wave_is_still_sending() -> None:
    clock = FakeClock()
    p = _view("quiet", clock, io.StringIO())
    p.emit(TargetEvent("kvm_1", S.ACCEPTED, 1, clock.time()))
    p.emit(TargetEvent("kvm_2", S.INTENT, 1, clock.time()))
    assert _texts(p) == []


def test_cool_down_refreshes_and_a_budget_about_to_trip() -> None:
    clock = FakeClock()
    stats = RunStats(cooling=lambda: 42.0, configured_rate=lambda: 5.0)
    p = _view("quiet", clock, io.StringIO(), stats=stats)
    p.phase = RunPhase(
        wave=2, wave_budget=1, wave_failures=1, run_budget=5, run_failures=1,
        refreshing=lambda: True,
    )  # fmt: skip
    assert _texts(p) == [
        "cooling down after 429s: 42.0s left",
        "refreshing sessions (one auth call for the fleet)",
        "wave 2's failure budget is spent: the next failure stops the run",
    ]
    p.phase.wave_budget, p.phase.wave_failures = 3, 0
    p.phase.run_failures = 4
    assert _texts(p)[-1] == "the run's failure budget: one more failure allowed, then the run stops"
    p.phase.run_failures = 2
    assert not any("budget" in t for t in _texts(p))


def test_the_live_view_shows_why_it_waits_and_pre_flight_first() -> None:
    clock, buffer = FakeClock(), io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=80)
    p = _view("live", clock, io.StringIO(), console=console)
    p.preflight(0, 4)
    p.preflight(4, 4)
    p.start()
    p.phase = RunPhase(wave=1, soak_until=clock.time() + 90, soak_before=2)
    p.tick()
    p.stop()
    screen = ANSI.sub("", buffer.getvalue())
    assert "pre-flight: 4 VPS(es) checked" in screen
    assert "waiting: soaking before wave 2: 1m30s left" in screen
    assert p.error is None


def test_plain_pre_flight_lines_at_most_once_a_second() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = _view("plain", clock, out)
    for done in range(0, 50):
        p.preflight(done, 100)
    clock.advance(1)
    p.preflight(60, 100)
    p.preflight(100, 100)
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "pre-flight: 0/100 VPS(es) checked",
        "pre-flight: 60/100 VPS(es) checked",
        "pre-flight: 100 VPS(es) checked",
    ]


def test_apply_shows_pre_flight_progress(make_thread_sim: ThreadSims, tmp_path: Path) -> None:
    with make_thread_sim(vps_count=3, time_scale=0.002) as sim:
        path = fleet(sim, tmp_path, 3)
        code, _, err = apply(sim, path)
    assert code == 0, err
    assert "pre-flight: 0/3 VPS(es)" in err
    assert "pre-flight: 3 VPS(es) checked" in err
    # Pre-flight comes before the first reinstall is sent.
    assert err.index("pre-flight: 3 VPS(es) checked") < err.index(" sent (wave 1)")


def test_at_80_columns_a_long_reason_is_cut_not_wrapped() -> None:
    clock, buffer = FakeClock(), io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=80)
    long_host = "web-frontend-0042.eu-central-1.production.example.internal"
    p = Progress(
        2, {1: 2}, stream=io.StringIO(), mode="live", clock=clock, console=console,
        hostnames={"kvm_1": long_host},
    )  # fmt: skip
    p.start()
    p.emit(TargetEvent("kvm_1", S.ACCEPTED, 1, clock.time()))
    p.emit(TargetEvent("kvm_2", S.ACCEPTED, 1, clock.time()))
    clock.advance(75)
    p.stop()
    final = ANSI.sub("", buffer.getvalue()).split("edis-fleet")[-1].splitlines()
    (line,) = [x for x in final if x.startswith("waiting:")]
    assert line.rstrip().endswith("…")
    assert line.startswith("waiting: 2 VPS(es) of wave 1 to be ready; slowest web-frontend")
    assert all(len(x) <= 80 for x in final)


def test_a_plain_waiting_line_carries_the_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    plan = plan_of([(1, [("kvm_1", "linux", True)])], rate=1.0, concurrency=1, soak_s=0.0)
    model = EtaModel(plan, lambda _: 100.0)
    p = Progress(1, {1: 1}, stream=out, mode="plain", clock=clock, hostnames=HOSTS, eta=model)
    p.start()
    p.emit(TargetEvent("kvm_1", S.INTENT, 1, clock.time()))
    p.emit(TargetEvent("kvm_1", S.ACCEPTED, 1, clock.time()))
    clock.advance(40)
    p.tick()
    assert out.getvalue().endswith(
        "waiting: 1 VPS(es) of wave 1 to be ready; slowest vps-001, accepted 40.0s ago"
        " (ETA 1m00s)\n"
    )


def test_json_pre_flight_lines_for_log_shippers() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = _view("json", clock, out)
    p.preflight(0, 2)
    p.preflight(2, 2)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["event"], x["done"], x["total"]) for x in lines] == [
        ("preflight", 0, 2),
        ("preflight", 2, 2),
    ]
    quiet = _view("quiet", clock, out := io.StringIO())
    quiet.preflight(1, 2)
    assert (out.getvalue(), quiet.error) == ("", None)
