"""The live ETA's model (run/eta.py): the plan's figures, corrected by observed installs,
checked from a table of events on a fake clock."""

from __future__ import annotations

import pytest

from orchestrator.clock import FakeClock
from orchestrator.model import TargetEvent, TargetState
from orchestrator.run.eta import EtaModel, EtaPlan, EtaVps, plan_of, priors

SENT, A, R, F = TargetState.INTENT, TargetState.ACCEPTED, TargetState.READY, TargetState.FAILED
T0 = 1_800_000_000.0


def _model(
    waves: dict[int, list[str]], *, rate: float = 1.0, soak: float = 0.0, image: str = "linux"
) -> EtaModel:
    plan = plan_of(
        ((w, [(k, image, True) for k in ids]) for w, ids in waves.items()),
        rate=rate,
        concurrency=100,
        soak_s=soak,
    )
    return EtaModel(plan, priors({"linux": 100.0, "slow": 400.0}, lambda _: 300.0))


# (case, waves, rate, soak, events as (seconds after T0, kvm id, state), now, expected ETA)
CASES = [
    # Nothing sent yet: 2 sends at 1/s, then the plan's 100 s install.
    ("plan only", {1: ["a", "b"]}, 1.0, 0.0, [], 0.0, 102.0),
    # Two waves and a soak of 50 s: 1 + 100, soak, 1 + 100.
    ("waves and soak", {1: ["a"], 2: ["b"]}, 1.0, 50.0, [], 0.0, 252.0),
    # a was accepted at 0: it ends at 100; b is sent at 11 and ends at 111.
    ("in flight", {1: ["a", "b"]}, 1.0, 0.0, [(0, "a", SENT), (0, "a", A)], 10.0, 101.0),
    # a took 40 s, not 100: b (sent at 41) ends at 81; observation beats the plan.
    (
        "observed",
        {1: ["a", "b"]},
        1.0,
        0.0,
        [(0, "a", SENT), (0, "a", A), (40, "a", R)],
        40.0,
        41.0,
    ),
    # Wave 1 ended at 40 (a took 40 s): the soak runs to 90, then b takes 1 + 40.
    (
        "soak counted from the wave's end",
        {1: ["a"], 2: ["b"]},
        1.0,
        50.0,
        [(0, "a", SENT), (0, "a", A), (40, "a", R)],
        60.0,
        71.0,
    ),
    # a is overdue (expected at 100, now 150): soon, a tenth of its install time.
    ("overdue", {1: ["a"]}, 1.0, 0.0, [(0, "a", SENT), (0, "a", A)], 150.0, 10.0),
    # A failed VPS is final like a ready one: nothing left.
    ("all final", {1: ["a"]}, 1.0, 0.0, [(0, "a", SENT), (1, "a", F)], 5.0, 0.0),
]


@pytest.mark.parametrize(
    ("waves", "rate", "soak", "events", "now", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_remaining_from_the_table(  # noqa: PLR0917 - one parameter per column of the table
    waves: dict[int, list[str]],
    rate: float,
    soak: float,
    events: list[tuple[float, str, TargetState]],
    now: float,
    expected: float,
) -> None:
    clock = FakeClock(T0)
    model = _model(waves, rate=rate, soak=soak)
    wave_of = {k: w for w, ids in waves.items() for k in ids}
    for at, kvm_id, state in events:
        model.observe(TargetEvent(kvm_id, state, wave_of[kvm_id], T0 + at))
    clock.advance(now)
    assert model.remaining(clock.time()) == pytest.approx(expected)


def test_an_unseen_image_is_scaled_by_what_the_others_took() -> None:
    # linux was planned at 100 s and took 50: the slow image (planned 400) is expected at 200.
    plan = EtaPlan((EtaVps("a", 1, "linux"), EtaVps("b", 1, "slow")), rate=1.0, concurrency=10)
    model = EtaModel(plan, priors({"linux": 100.0, "slow": 400.0}, lambda _: 0.0))
    for at, state in ((0.0, SENT), (0.0, A), (50.0, R)):
        model.observe(TargetEvent("a", state, 1, T0 + at))
    assert model.install_s("slow") == pytest.approx(200.0)
    # b is sent one second from now and installs for 200 s.
    assert model.remaining(T0 + 50) == pytest.approx(201.0)


def test_the_runs_own_send_rate_replaces_the_plans_once_it_has_sent_enough() -> None:
    ids = [f"v{i}" for i in range(40)]
    model = _model({1: ids}, rate=10.0)
    # Sent at 2/s (the provider slowed it), not the planned 10/s.
    for i, kvm_id in enumerate(ids[:21]):
        model.observe(TargetEvent(kvm_id, SENT, 1, T0 + i * 0.5))
    assert model.send_rate() == pytest.approx(2.0)
    # Never faster than the plan allows.
    fast = _model({1: ids}, rate=1.0)
    for i, kvm_id in enumerate(ids[:21]):
        fast.observe(TargetEvent(kvm_id, SENT, 1, T0 + i * 0.1))
    assert fast.send_rate() == pytest.approx(1.0)


def test_a_vps_without_readiness_has_no_install_to_wait_for() -> None:
    plan = plan_of([(1, [("a", "linux", False)])], rate=2.0, concurrency=10, soak_s=0.0)
    model = EtaModel(plan, lambda _: 300.0)
    assert model.remaining(T0) == pytest.approx(0.5)


def test_completions_alone_do_not_move_the_estimate() -> None:
    # Ten VPSes, five ready after 10 s each: the rest still take their install time, not
    # "as long again as so far".
    ids = [f"v{i}" for i in range(10)]
    model = _model({1: ids}, rate=100.0)
    for kvm_id in ids:
        model.observe(TargetEvent(kvm_id, SENT, 1, T0))
        model.observe(TargetEvent(kvm_id, A, 1, T0))
    for kvm_id in ids[:5]:
        model.observe(TargetEvent(kvm_id, R, 1, T0 + 10))
    assert model.remaining(T0 + 10) == pytest.approx(1.0)  # overdue: a tenth of 10 s
