"""The scheduler's failure budgets and in-doubt resends on a FakeClock, against a scripted API.

No simulator and no real time: the API answers from a script per VPS and reports installs on
the same fake clock, so waits of minutes (install windows, readiness deadlines) take no time
and every number (when a resend happened, what the budgets counted) is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.clock import FakeClock
from orchestrator.errors import InDoubtError, RejectedError, ThrottledError
from orchestrator.fleet import InDoubtPolicy, ReadinessMode
from orchestrator.model import TargetEvent, TargetState
from orchestrator.run.limits import Limits
from orchestrator.run.retry import RetryPolicy
from orchestrator.run.scheduler import Job, RunResult, RunSettings, Scheduler, WaveSpec
from orchestrator.secrets import Secret

INSTALL_S = 300.0  # how long a fake install takes on the fake clock
WINDOW_S = 600.0  # the install window after which an in-doubt reinstall may be resent


@dataclass
class FakeAPI:
    """A ``ReinstallAPI`` answering from scripts: ``sends[kvm_id]`` lists what each reinstall
    POST does (``ok``, ``lost``: an in-doubt answer, ``reject``, ``throttle``; ``ok`` once the
    script is used up), ``installs[kvm_id]`` how the install ends (``ok`` or ``fail``)."""

    clock: FakeClock
    sends: dict[str, list[str]] = field(default_factory=dict)
    installs: dict[str, str] = field(default_factory=dict)
    sent: list[tuple[str, float]] = field(default_factory=list)  # (kvm id, monotonic time)
    accepted_at: dict[str, float] = field(default_factory=dict)

    async def reinstall(
        self, kvm_id: str, *, image: str, password: Secret, user_data: Secret | None
    ) -> None:
        self.sent.append((kvm_id, self.clock.monotonic()))
        script = self.sends.get(kvm_id, [])
        step = script.pop(0) if script else "ok"
        where = {"endpoint": "set/reinstall", "kvm_id": kvm_id}
        if step == "lost":
            raise InDoubtError("no answer after the request was sent", **where)
        if step == "reject":
            raise RejectedError("image not offered", status=400, **where)
        if step == "throttle":
            raise ThrottledError("slow down", status=429, retry_after=5.0, **where)
        self.accepted_at[kvm_id] = self.clock.monotonic()

    async def power(self, kvm_id: str) -> str:
        started = self.accepted_at.get(kvm_id)
        if started is not None and self.clock.monotonic() < started + INSTALL_S:
            return "server is being reinstalled"
        return "server powered off" if self.installs.get(kvm_id) == "fail" else "powered on"

    async def address(self, kvm_id: str) -> str | None:
        return None

    def sends_of(self, kvm_id: str) -> list[float]:
        return [at for k, at in self.sent if k == kvm_id]


@dataclass
class Sink:
    """Records intents and events; ``on_event`` may react to one (e.g. drain the run)."""

    intents: list[str] = field(default_factory=list)
    events: list[TargetEvent] = field(default_factory=list)
    scheduler: Scheduler | None = None
    drain_on: TargetState | None = None

    async def before_send(self, kvm_id: str, wave: int) -> None:
        self.intents.append(kvm_id)

    def emit(self, event: TargetEvent) -> None:
        self.events.append(event)
        if event.state is self.drain_on and self.scheduler is not None:
            self.scheduler.drain()


def job(kvm_id: str, wave: int = 1, **overrides: object) -> Job:
    values: dict[str, object] = {
        "kvm_id": kvm_id,
        "wave": wave,
        "image": "cloudinit_debian-bookworm",
        "password": Secret("root-pass-1234"),
        "user_data": None,
        "readiness": ReadinessMode.API,
        "port": 22,
        "deadline_s": 1200.0,
        "min_install_s": 60.0,
        "install_window_s": WINDOW_S,
        "poll_interval_s": 15.0,
    }
    values.update(overrides)
    return Job(**values)  # type: ignore[arg-type]


def wave(index: int, ids: Sequence[str], budget: int, **overrides: object) -> WaveSpec:
    return WaveSpec(index, tuple(job(k, index, **overrides) for k in ids), budget)


async def run(
    api: FakeAPI,
    waves: Sequence[WaveSpec],
    *,
    run_budget: int = 100,
    in_doubt: InDoubtPolicy = InDoubtPolicy.REPORT,
    prior: dict[int, int] | None = None,
    sink: Sink | None = None,
    concurrency: int = 1,
) -> RunResult:
    clock = api.clock
    sink = sink or Sink()
    scheduler = Scheduler(
        api,
        sink,
        clock=clock,
        limits=Limits.create(concurrency=concurrency, rate=100.0, clock=clock),
        settings=RunSettings(
            run_budget=run_budget,
            in_doubt=in_doubt,
            retry=RetryPolicy(attempts=3, base=1.0, cap=10.0, deadline=600.0),
        ),
        prior_failures=prior,
    )
    sink.scheduler = scheduler
    return await scheduler.run(waves)


# -- failure budgets ----------------------------------------------------------------------------


async def test_a_failure_past_the_wave_budget_stops_sending_and_skips_the_rest() -> None:
    api = FakeAPI(FakeClock(), sends={"a1": ["reject"]})
    result = await run(api, [wave(1, ["a1", "a2", "a3"], budget=0), wave(2, ["b1"], budget=5)])
    assert result.aborted == "wave 1 failure budget (0) exceeded: 1 failed"
    assert result.states == {
        "a1": TargetState.FAILED,
        "a2": TargetState.SKIPPED,
        "a3": TargetState.SKIPPED,
        "b1": TargetState.SKIPPED,
    }
    assert result.reasons["a2"] == f"not sent: {result.aborted}"
    assert result.reasons["b1"] == f"not sent: {result.aborted}"
    assert [k for k, _ in api.sent] == ["a1"]  # nothing sent after the trip


async def test_failures_within_the_budget_do_not_stop_the_run() -> None:
    api = FakeAPI(FakeClock(), sends={"a2": ["reject"]}, installs={"b1": "fail"})
    result = await run(
        api, [wave(1, ["a1", "a2", "a3"], budget=1), wave(2, ["b1", "b2"], budget=1)]
    )
    assert result.aborted is None
    assert result.count(TargetState.FAILED) == 2
    assert result.count(TargetState.READY) == 3
    assert result.reasons["b1"].startswith("not ready: install failed")


async def test_the_run_budget_counts_across_waves() -> None:
    api = FakeAPI(FakeClock(), sends={"a1": ["reject"], "b1": ["reject"]})
    result = await run(
        api,
        [wave(1, ["a1", "a2"], budget=1), wave(2, ["b1", "b2"], budget=1)],
        run_budget=1,
    )
    assert result.aborted == "run failure budget (1) exceeded: 2 failed"
    assert result.states["a2"] is TargetState.READY
    assert result.states["b2"] is TargetState.SKIPPED
    assert [k for k, _ in api.sent] == ["a1", "a2", "b1"]


async def test_failures_counted_before_a_resume_count_against_the_budgets() -> None:
    api = FakeAPI(FakeClock(), sends={"a2": ["reject"]})
    result = await run(api, [wave(1, ["a2", "a3"], budget=1)], prior={1: 1})
    assert result.aborted == "wave 1 failure budget (1) exceeded: 2 failed"
    assert result.states["a3"] is TargetState.SKIPPED


async def test_an_install_not_ready_at_the_deadline_is_a_failure_against_the_budget() -> None:
    api = FakeAPI(FakeClock())
    # The install takes INSTALL_S; a deadline shorter than that can only end not ready. Both
    # VPSes of wave 1 are sent before the first readiness wait ends (waits hold no sending
    # slot), so both are waited for; the trip stops wave 2.
    short = INSTALL_S / 2
    result = await run(
        api, [wave(1, ["a1", "a2"], budget=0, deadline_s=short), wave(2, ["b1"], budget=5)]
    )
    assert result.states["a1"] is TargetState.FAILED
    assert result.reasons["a1"].startswith(f"not ready: deadline of {short:.0f} s passed")
    assert result.states["a2"] is TargetState.FAILED
    assert result.aborted == "wave 1 failure budget (0) exceeded: 1 failed"
    assert result.states["b1"] is TargetState.SKIPPED
    assert [k for k, _ in api.sent] == ["a1", "a2"]


async def test_a_throttled_send_is_retried_and_is_no_failure() -> None:
    api = FakeAPI(FakeClock(), sends={"a1": ["throttle", "throttle"]})
    result = await run(api, [wave(1, ["a1"], budget=0)])
    assert result.aborted is None
    assert result.states["a1"] is TargetState.READY
    assert len(api.sends_of("a1")) == 3
    # Each attempt after a throttle waited at least the server's Retry-After (5 s).
    first, second, third = api.sends_of("a1")
    assert second - first >= 5.0
    assert third - second >= 5.0


# -- in doubt -----------------------------------------------------------------------------------


async def test_in_doubt_under_report_is_never_resent_and_counts_against_the_budget() -> None:
    api = FakeAPI(FakeClock(), sends={"a1": ["lost"]})
    result = await run(api, [wave(1, ["a1", "a2"], budget=0)])
    assert result.states["a1"] is TargetState.IN_DOUBT
    assert result.reasons["a1"] == "no answer after the request was sent"
    assert len(api.sends_of("a1")) == 1
    assert result.aborted == "wave 1 failure budget (0) exceeded: 1 failed"
    assert result.states["a2"] is TargetState.SKIPPED


async def test_resend_after_window_resends_once_after_the_install_window() -> None:
    api = FakeAPI(FakeClock(), sends={"a1": ["lost"]})
    sink = Sink()
    result = await run(
        api, [wave(1, ["a1"], budget=0)], in_doubt=InDoubtPolicy.RESEND_AFTER_WINDOW, sink=sink
    )
    assert result.states["a1"] is TargetState.READY
    assert result.aborted is None
    first, second = api.sends_of("a1")
    assert second - first >= WINDOW_S  # a running install is never interrupted
    assert sink.intents == ["a1", "a1"]  # the resend has an intent of its own
    waiting = [e for e in sink.events if e.state is TargetState.IN_DOUBT]
    assert [e.reason for e in waiting] == ["waiting out the install window"]


async def test_a_resend_that_is_lost_again_ends_in_doubt_after_two_sends() -> None:
    api = FakeAPI(FakeClock(), sends={"a1": ["lost", "lost"]})
    result = await run(api, [wave(1, ["a1"], budget=1)], in_doubt=InDoubtPolicy.RESEND_AFTER_WINDOW)
    assert result.states["a1"] is TargetState.IN_DOUBT
    assert len(api.sends_of("a1")) == 2


async def test_a_rejected_resend_ends_failed() -> None:
    api = FakeAPI(FakeClock(), sends={"a1": ["lost", "reject"]})
    result = await run(api, [wave(1, ["a1"], budget=1)], in_doubt=InDoubtPolicy.RESEND_AFTER_WINDOW)
    assert result.states["a1"] is TargetState.FAILED
    assert result.reasons["a1"] == "image not offered"


async def test_a_resumed_in_doubt_vps_waits_only_what_is_left_of_the_window() -> None:
    clock = FakeClock()
    api = FakeAPI(clock)
    since = clock.time() - 400.0  # in doubt for 400 s of the 600 s window already
    start = clock.monotonic()
    result = await run(
        api,
        [wave(1, ["a1"], budget=0, in_doubt_since=since)],
        in_doubt=InDoubtPolicy.RESEND_AFTER_WINDOW,
    )
    assert result.states["a1"] is TargetState.READY
    (sent_at,) = api.sends_of("a1")
    assert 200.0 <= sent_at - start < 210.0  # the rest of the window, plus a rate token


async def test_a_resumed_in_doubt_vps_past_its_window_is_resent_at_once() -> None:
    clock = FakeClock()
    api = FakeAPI(clock)
    start = clock.monotonic()
    result = await run(
        api,
        [wave(1, ["a1"], budget=0, in_doubt_since=clock.time() - 5000.0)],
        in_doubt=InDoubtPolicy.RESEND_AFTER_WINDOW,
    )
    assert result.states["a1"] is TargetState.READY
    (sent_at,) = api.sends_of("a1")
    assert sent_at - start < 10.0


async def test_a_resumed_in_doubt_vps_under_report_stays_in_doubt_unsent() -> None:
    clock = FakeClock()
    api = FakeAPI(clock)
    result = await run(api, [wave(1, ["a1"], budget=1, in_doubt_since=clock.time() - 10.0)])
    assert result.states["a1"] is TargetState.IN_DOUBT
    assert api.sent == []


async def test_a_drain_during_the_window_leaves_it_in_doubt_unsent() -> None:
    api = FakeAPI(FakeClock(), sends={"a1": ["lost"]})
    sink = Sink(drain_on=TargetState.IN_DOUBT)  # drain as soon as it starts waiting
    result = await run(
        api,
        [wave(1, ["a1", "a2"], budget=5)],
        in_doubt=InDoubtPolicy.RESEND_AFTER_WINDOW,
        sink=sink,
    )
    assert result.interrupted
    assert result.states["a1"] is TargetState.IN_DOUBT
    assert result.reasons["a1"] == "no answer after the request was sent"
    assert len(api.sends_of("a1")) == 1
    assert result.states["a2"] is TargetState.SKIPPED


async def test_an_accepted_vps_on_resume_is_only_checked_for_readiness() -> None:
    api = FakeAPI(FakeClock())
    result = await run(api, [wave(1, ["a1"], budget=0, accepted_already=True)])
    assert result.states["a1"] is TargetState.READY
    assert api.sent == []


# -- resume: windows, resends, deadlines and soaks counted from the recorded times -----------


def _scheduler(api: FakeAPI, sink: Sink, **settings: object) -> Scheduler:
    wave_ready = settings.pop("wave_ready", None)
    return Scheduler(
        api,
        sink,
        clock=api.clock,
        limits=Limits.create(concurrency=1, rate=100.0, clock=api.clock),
        settings=RunSettings(run_budget=100, **settings),  # type: ignore[arg-type]
        wave_ready=wave_ready,  # type: ignore[arg-type]
    )


async def test_a_resumed_doubt_is_resent_when_the_window_from_the_recorded_send_ends() -> None:
    clock = FakeClock()
    api = FakeAPI(clock)
    sink = Sink()
    start = clock.monotonic()
    # Sent 400 s before the resume: 200 s of the 600 s window are left.
    doubted = job("a1", in_doubt_since=clock.time() - 400.0)
    scheduler = _scheduler(api, sink, in_doubt=InDoubtPolicy.RESEND_AFTER_WINDOW)
    result = await scheduler.run([WaveSpec(1, (doubted,), 5)])
    assert result.states["a1"] is TargetState.READY
    assert api.sends_of("a1") == [start + 200.0]
    first = next(e for e in sink.events if e.state is TargetState.IN_DOUBT)
    assert first.resend  # the decision the journal records


async def test_a_resumed_doubt_whose_resend_was_spent_is_never_resent() -> None:
    api = FakeAPI(FakeClock())
    doubted = job("a1", in_doubt_since=api.clock.time() - 10.0, resend_spent=True)
    scheduler = _scheduler(api, Sink(), in_doubt=InDoubtPolicy.RESEND_AFTER_WINDOW)
    result = await scheduler.run([WaveSpec(1, (doubted,), 5)])
    assert result.states["a1"] is TargetState.IN_DOUBT
    assert "never a second" in result.reasons["a1"]
    assert api.sent == []


async def test_a_resumed_readiness_deadline_counts_from_the_recorded_acceptance() -> None:
    clock = FakeClock()
    api = FakeAPI(clock)
    api.accepted_at["a1"] = clock.monotonic()  # installing: not back within what is left
    start = clock.monotonic()
    accepted = job("a1", accepted_already=True, accepted_at=clock.time() - 1100.0)
    result = await _scheduler(api, Sink()).run([WaveSpec(1, (accepted,), 5)])
    assert result.states["a1"] is TargetState.FAILED
    # 100 s of the 1200 s deadline were left, not a fresh 1200 s (one poll interval slack).
    assert clock.monotonic() - start <= 100.0 + 15.0


async def test_a_resumed_soak_is_served_in_full_from_the_recorded_wave_ready_time() -> None:
    clock = FakeClock()
    api = FakeAPI(clock)
    start = clock.monotonic()
    # Wave 1 became ready 20 s before the resume; the soak is 30 s: 10 s are left.
    scheduler = _scheduler(api, Sink(), soak_s=30.0, wave_ready={1: clock.time() - 20.0})
    await scheduler.run([wave(2, ["b1"], budget=5)])
    assert api.sends_of("b1") == [start + 10.0]
