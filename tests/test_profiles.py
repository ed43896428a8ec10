"""End to end against each simulator fault profile: sporadic errors must not stall a fleet.

The simulator runs in the test's event loop (installs time-scaled to near nothing); the client
side (limiter, retries, session book) runs on a ``FakeClock`` started at the real wall time,
so rate limiting, backoff and ``Retry-After`` waits cost no real time while the wiring is a
run's: pre-flight reads every image list, then the scheduler sends every reinstall.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from orchestrator.clock import FakeClock
from orchestrator.edis.client import EdisClient
from orchestrator.edis.session import SessionBook
from orchestrator.fleet import ReadinessMode
from orchestrator.model import TargetEvent, TargetState
from orchestrator.run.api import EdisFleetAPI, LimitedAuth, ReadRetries
from orchestrator.run.limits import Limits
from orchestrator.run.preflight import Check, preflight
from orchestrator.run.retry import RetryBudget
from orchestrator.run.scheduler import Job, RunResult, RunSettings, Scheduler, WaveSpec
from orchestrator.secrets import Secret
from orchestrator.simulator import Simulator
from tests.conftest import SimFactory

N = 60
IMAGE = "cloudinit_ubuntu-lts-24-04"
FINAL = {TargetState.READY, TargetState.FAILED, TargetState.IN_DOUBT}


class Sink:
    """Counts the final events."""

    def __init__(self) -> None:
        self.final: Counter[TargetState] = Counter()

    async def before_send(self, kvm_id: str, wave: int) -> None:
        return None

    def emit(self, event: TargetEvent) -> None:
        if event.state in FINAL:
            self.final[event.state] += 1


async def run_fleet(sim: Simulator) -> tuple[RunResult, Limits, RetryBudget]:
    """Pre-flight and reinstall every VPS of ``sim`` at 20/s, concurrency 20, readiness none."""
    clock = FakeClock(start=time.time())  # signatures carry the simulator's real wall time
    limits = Limits.create(concurrency=20, rate=20.0, clock=clock)
    async with EdisClient(
        session_url=sim.session_url,
        email=sim.email,
        password=Secret(sim.password),
        allowed_hosts=["127.0.0.0/8"],
        clock=clock,
    ) as client:
        budget = RetryBudget()
        reads = ReadRetries(clock=clock, budget=budget, limiter=limits.requests)
        book = SessionBook(LimitedAuth(client, limits.requests, reads), clock=clock)
        found = await preflight(
            [Check(k, IMAGE) for k in sim.vps_ids],
            client=client,
            book=book,
            retries=reads,
            limiter=limits.requests,
        )
        assert found.ok, found.problems
        jobs = tuple(
            Job(
                kvm_id=k,
                wave=1,
                image=IMAGE,
                password=Secret("root-pass-1234"),
                user_data=None,
                readiness=ReadinessMode.NONE,
                port=22,
                deadline_s=600.0,
                min_install_s=0.0,
                install_window_s=600.0,
            )
            for k in sim.vps_ids
        )
        scheduler = Scheduler(
            EdisFleetAPI(client, book, reads),
            Sink(),
            clock=clock,
            limits=limits,
            settings=RunSettings(run_budget=N),
            budget=budget,
        )
        result = await scheduler.run([WaveSpec(1, jobs, budget=N)])
    return result, limits, budget


def assert_accounted_once(sim: Simulator, result: RunResult) -> None:
    """Every VPS ended final, and none was reinstalled twice."""
    assert len(result.states) == N
    assert set(result.states.values()) <= FINAL, Counter(result.states.values())
    for kvm_id, state in result.states.items():
        accepted = sim.counters.reinstall_accepted.get(kvm_id, 0)
        assert accepted <= 1, kvm_id
        if state is TargetState.READY:
            assert accepted == 1, kvm_id


@pytest.mark.parametrize("profile", ["healthy", "flaky"])
async def test_sporadic_errors_cause_no_fleet_wide_pause(
    make_sim: SimFactory, profile: str
) -> None:
    async with make_sim(vps_count=N, profile=profile) as sim:
        result, limits, _ = await run_fleet(sim)
        assert_accounted_once(sim, result)
        faults = sim.counters.faults
    rate = limits.requests
    assert rate.bucket.adaptive.pauses == 0
    assert rate.cooldown_total == 0.0
    if profile == "healthy":
        assert result.count(TargetState.READY) == N
        assert (rate.throttles, rate.errors, rate.bucket.cuts) == (0, 0, 0)
        assert rate.rate == 20.0
    else:
        # The profile did inject errors, and each was that request's problem only.
        assert sum(faults.get(k, 0) for k in ("http500", "http502", "http503", "drop")) > 0
        assert rate.errors > 0
        # An in-doubt VPS is one whose reinstall got a 5xx or a dropped connection: never
        # resent, reported.
        assert result.count(TargetState.READY) >= N * 0.8


@pytest.mark.parametrize("profile", ["throttled", "chaos"])
async def test_throttling_profiles_complete(make_sim: SimFactory, profile: str) -> None:
    async with make_sim(vps_count=N, profile=profile) as sim:
        result, limits, budget = await run_fleet(sim)
        assert_accounted_once(sim, result)
        throttled = sum(sim.counters.faults.get(k, 0) for k in ("throttle", "throttle_burst"))
    assert throttled > 0
    assert limits.requests.throttles > 0
    assert budget.refused == 0
    if profile == "throttled":  # 429s only: every reinstall goes through in the end
        assert result.count(TargetState.READY) == N
    else:
        assert result.count(TargetState.READY) >= N * 0.7
