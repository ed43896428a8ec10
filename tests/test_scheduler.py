"""The scheduler against the simulator over loopback: waves, in-doubt policy, budgets, drain.

Every test checks the simulator's per-VPS counters: each VPS reinstalled exactly once, or
reported in doubt/failed/skipped, never twice unless the policy says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from orchestrator.clock import SystemClock
from orchestrator.edis.session import SessionBook
from orchestrator.fleet import InDoubtPolicy, ReadinessMode
from orchestrator.model import TargetEvent, TargetState
from orchestrator.run.api import EdisFleetAPI, LimitedAuth
from orchestrator.run.limits import Limits
from orchestrator.run.retry import RetryPolicy
from orchestrator.run.scheduler import (
    Job,
    RunResult,
    RunSettings,
    Scheduler,
    WaveSpec,
)
from orchestrator.secrets.values import Secret
from orchestrator.simulator import Simulator
from tests.conftest import SimFactory
from tests.test_client import client_for

FAST_RETRY = RetryPolicy(attempts=6, base=0.01, cap=0.05, deadline=30.0)


@dataclass
class RecordingSink:
    """An in-memory EventSink: remembers intents and events."""

    intents: list[str] = field(default_factory=list)
    events: list[TargetEvent] = field(default_factory=list)
    first_accept: anyio.Event = field(default_factory=anyio.Event)

    async def before_send(self, kvm_id: str, wave: int) -> None:
        self.intents.append(kvm_id)

    def emit(self, event: TargetEvent) -> None:
        self.events.append(event)
        if event.state is TargetState.ACCEPTED:
            self.first_accept.set()


def jobs_for(
    ids: Sequence[str], *, image: str = "debian-bullseye", wave: int = 1, window: float = 0.05
) -> tuple[Job, ...]:
    return tuple(
        Job(
            kvm_id=kvm_id,
            wave=wave,
            image=image,
            password=Secret("root-pass-1234"),
            user_data=None,
            readiness=ReadinessMode.API,
            port=22,
            deadline_s=20.0,
            min_install_s=0.0,
            install_window_s=window,
            poll_interval_s=0.02,
        )
        for kvm_id in ids
    )


@asynccontextmanager
async def scheduler_for(
    sim: Simulator, settings: RunSettings, *, concurrency: int = 8, rate: float = 2000.0
) -> AsyncIterator[tuple[Scheduler, RecordingSink]]:
    clock = SystemClock()
    limits = Limits.create(concurrency=concurrency, rate=rate, clock=clock, burst=3)
    async with client_for(sim) as client:
        book = SessionBook(LimitedAuth(client, limits.requests), clock=clock)
        sink = RecordingSink()
        yield (
            Scheduler(
                EdisFleetAPI(client, book), sink, clock=clock, limits=limits, settings=settings
            ),
            sink,
        )


def settings(**kwargs: object) -> RunSettings:
    base: dict[str, object] = {"run_budget": 0, "retry": FAST_RETRY}
    base.update(kwargs)
    return RunSettings(**base)  # type: ignore[arg-type]


def assert_exactly_once(sim: Simulator, result: RunResult) -> None:
    for kvm_id, state in result.states.items():
        accepted = sim.counters.reinstall_accepted.get(kvm_id, 0)
        if state in (TargetState.READY, TargetState.ACCEPTED):
            assert accepted == 1, kvm_id
        elif state is TargetState.SKIPPED:
            assert sim.counters.reinstall_received.get(kvm_id, 0) == 0, kvm_id


async def test_healthy_fleet_in_two_waves(make_sim: SimFactory) -> None:
    async with make_sim(vps_count=12) as sim, scheduler_for(sim, settings()) as (sched, sink):
        ids = sim.vps_ids
        waves = [
            WaveSpec(1, jobs_for(ids[:1]), budget=0),
            WaveSpec(2, jobs_for(ids[1:], wave=2), budget=0),
        ]
        result = await sched.run(waves)
    assert result.aborted is None
    assert result.count(TargetState.READY) == 12
    assert_exactly_once(sim, result)
    assert sorted(sink.intents) == sorted(ids)
    # The canary was ready before the second wave sent anything.
    canary_ready = next(e.at for e in sink.events if e.state is TargetState.READY)
    first_wave2_intent = min(
        e.at for e in sink.events if e.state is TargetState.INTENT and e.wave == 2
    )
    assert canary_ready <= first_wave2_intent


async def test_throttled_answers_are_retried_until_accepted(sim: Simulator) -> None:
    sim.set_faults(script={"set/reinstall": ["429:0", "503", "429", "503"]})
    async with scheduler_for(sim, settings()) as (sched, _):
        result = await sched.run([WaveSpec(1, jobs_for(sim.vps_ids), budget=0)])
    assert result.aborted is None
    assert result.count(TargetState.READY) == len(sim.vps_ids)
    assert_exactly_once(sim, result)


async def test_lost_response_under_report_policy_is_in_doubt_and_not_resent(
    sim: Simulator,
) -> None:
    victim = sim.vps_ids[0]
    sim.set_faults(script={"set/reinstall": ["lost"]})
    async with scheduler_for(sim, settings(run_budget=5), concurrency=1) as (sched, _):
        result = await sched.run([WaveSpec(1, jobs_for(sim.vps_ids), budget=5)])
    assert result.states[victim] is TargetState.IN_DOUBT
    assert sim.counters.reinstall_received[victim] == 1
    assert sim.counters.reinstall_accepted[victim] == 1
    assert all(result.states[k] is TargetState.READY for k in sim.vps_ids[1:])
    assert_exactly_once(sim, result)


async def test_lost_response_under_resend_after_window_is_resent_once(sim: Simulator) -> None:
    victim = sim.vps_ids[0]
    sim.set_faults(script={"set/reinstall": ["lost"]})
    cfg = settings(run_budget=5, in_doubt=InDoubtPolicy.RESEND_AFTER_WINDOW)
    async with scheduler_for(sim, cfg, concurrency=1) as (sched, _):
        result = await sched.run([WaveSpec(1, jobs_for(sim.vps_ids, window=0.4), budget=5)])
    assert result.states[victim] is TargetState.READY
    assert sim.counters.reinstall_received[victim] == 2  # the policy allows exactly one resend


async def test_budget_trips_in_the_canary_and_nothing_else_is_sent(sim: Simulator) -> None:
    canary, rest = sim.vps_ids[0], sim.vps_ids[1:]
    async with scheduler_for(sim, settings()) as (sched, _):
        result = await sched.run(
            [
                WaveSpec(1, jobs_for([canary], image="no-such-image"), budget=0),
                WaveSpec(2, jobs_for(rest, wave=2), budget=0),
            ]
        )
    assert result.aborted is not None
    assert "wave 1" in result.aborted
    assert result.states[canary] is TargetState.FAILED
    assert all(result.states[k] is TargetState.SKIPPED for k in rest)
    assert sum(sim.counters.reinstall_received.values()) == 1


async def test_drain_sends_nothing_new_and_leaves_accepted_vpses_for_resume(
    make_sim: SimFactory,
) -> None:
    async with (
        make_sim(vps_count=20, time_scale=1.0) as sim,
        scheduler_for(sim, settings(), concurrency=2) as (sched, sink),
    ):

        async def drain_after_first_accept() -> None:
            await sink.first_accept.wait()
            sched.drain()

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain_after_first_accept)
            result = await sched.run([WaveSpec(1, jobs_for(sim.vps_ids), budget=0)])
    assert result.interrupted
    sent = {k for k, n in sim.counters.reinstall_received.items() if n}
    assert 1 <= len(sent) < 20
    for kvm_id in sim.vps_ids:
        if kvm_id in sent:
            assert result.states[kvm_id] is TargetState.ACCEPTED
        else:
            assert result.states[kvm_id] is TargetState.SKIPPED
    assert_exactly_once(sim, result)


async def test_expiring_sessions_never_send_an_expired_signature(make_sim: SimFactory) -> None:
    """Signatures live 4 s; the run outlasts the first one; not one request may carry an
    expired signature (the simulator counts them per VPS)."""
    # The lifetime stays 4 s: valid_until and Date are whole seconds, so the book's refresh
    # margin (half the lifetime) covers a request's latency by about 1 s at worst; shorter
    # lifetimes would make a loaded machine fail the test, not the product.
    async with (
        make_sim(vps_count=15, time_scale=0.004, signature_lifetime=4.0) as sim,
        # The run is at least 31 requests (one auth, then a reinstall and a status per VPS)
        # at 6/s after a burst of 3: over 4.6 s whatever the machine, so it must refresh.
        scheduler_for(sim, settings(run_budget=15), concurrency=3, rate=6.0) as (sched, _),
    ):
        jobs = tuple(
            dataclasses.replace(job, min_install_s=1.0, poll_interval_s=0.2)
            for job in jobs_for(sim.vps_ids)
        )
        result = await sched.run([WaveSpec(1, jobs, budget=15)])
        assert result.count(TargetState.READY) == 15
        assert sum(sim.counters.bad_signature.values()) == 0
        assert sim.counters.auth_calls >= 2  # it did refresh along the way
        assert_exactly_once(sim, result)


async def test_an_invalidation_storm_mid_run_costs_one_refresh(sim: Simulator) -> None:
    async with scheduler_for(sim, settings(run_budget=5)) as (sched, sink):

        async def storm() -> None:
            await sink.first_accept.wait()
            sim.invalidate_sessions()

        async with anyio.create_task_group() as tg:
            tg.start_soon(storm)
            result = await sched.run([WaveSpec(1, jobs_for(sim.vps_ids), budget=5)])
    assert result.count(TargetState.READY) == len(sim.vps_ids)
    assert sim.counters.auth_calls == 2
    assert_exactly_once(sim, result)


async def test_a_migration_mid_run_is_followed(make_sim: SimFactory) -> None:
    async with (
        make_sim(vps_count=6, api_nodes=3) as sim,
        scheduler_for(sim, settings()) as (
            sched,
            sink,
        ),
    ):
        moved = sim.vps_ids[-1]
        before = sim.vps(moved).api_host

        async def migrate() -> None:
            await sink.first_accept.wait()
            sim.migrate(moved)

        async with anyio.create_task_group() as tg:
            tg.start_soon(migrate)
            result = await sched.run(
                [
                    WaveSpec(1, jobs_for(sim.vps_ids[:1]), budget=0),
                    WaveSpec(2, jobs_for(sim.vps_ids[1:], wave=2), budget=0),
                ]
            )
    assert sim.vps(moved).api_host != before
    assert result.states[moved] is TargetState.READY
    assert sim.counters.reinstall_accepted[moved] == 1
    assert_exactly_once(sim, result)


async def test_tcp_readiness_through_the_scheduler(make_sim: SimFactory) -> None:
    """The tcp probe waits for each VPS's own port to close and answer again."""
    async with (
        make_sim(vps_count=3, time_scale=0.002, tcp_listeners=True) as sim,
        scheduler_for(sim, settings()) as (sched, _),
    ):
        jobs = tuple(
            dataclasses.replace(
                job, readiness=ReadinessMode.TCP, port=sim.ssh_port, min_install_s=0.1
            )
            for job in jobs_for(sim.vps_ids)
        )
        result = await sched.run([WaveSpec(1, jobs, budget=0)])
    assert result.count(TargetState.READY) == 3
    assert all("answered" in result.reasons[k] for k in sim.vps_ids)
    assert_exactly_once(sim, result)


async def test_cancel_records_sends_in_flight_as_in_doubt(make_sim: SimFactory) -> None:
    """The second signal: stop at once; what was being sent is in doubt, the rest skipped."""
    async with (
        make_sim(vps_count=6) as sim,
        scheduler_for(sim, settings(run_budget=6), concurrency=2) as (sched, sink),
    ):
        sim.set_faults(script={"set/reinstall": ["latency:5", "latency:5"]})

        async def cancel_when_sending() -> None:
            with anyio.fail_after(10):
                while len(sink.intents) < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            sched.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_sending)
            result = await sched.run([WaveSpec(1, jobs_for(sim.vps_ids), budget=6)])
    assert result.interrupted
    in_doubt = {k for k, s in result.states.items() if s is TargetState.IN_DOUBT}
    assert in_doubt == set(sink.intents)
    assert all(result.states[k] is TargetState.SKIPPED for k in set(sim.vps_ids) - in_doubt)
