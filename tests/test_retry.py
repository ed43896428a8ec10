"""The retry policy: the decision table, backoff, attempts, deadline, Retry-After, budget."""

from __future__ import annotations

import random

import anyio
import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import (
    ApiError,
    AuthenticationError,
    InDoubtError,
    NotSentError,
    RejectedError,
    SessionExpiredError,
    ThrottledError,
)
from orchestrator.model import Outcome
from orchestrator.run.retry import (
    Action,
    RetryBudget,
    RetryPolicy,
    backoff,
    backoff_ceiling,
    call_with_retries,
    decide,
    wait_after,
)

EP = "set/reinstall"

# Every outcome class × destructive or not: the whole policy in one table.
DECISIONS = [
    (Outcome.NOT_SENT, True, Action.RETRY),
    (Outcome.NOT_SENT, False, Action.RETRY),
    (Outcome.THROTTLED, True, Action.COOLDOWN_THEN_RETRY),
    (Outcome.THROTTLED, False, Action.COOLDOWN_THEN_RETRY),
    (Outcome.SESSION, True, Action.FINAL),
    (Outcome.SESSION, False, Action.FINAL),
    (Outcome.REJECTED, True, Action.FINAL),
    (Outcome.REJECTED, False, Action.FINAL),
    (Outcome.ACCEPTED, True, Action.DONE),
    (Outcome.ACCEPTED, False, Action.DONE),
    (Outcome.IN_DOUBT, True, Action.IN_DOUBT),
    (Outcome.IN_DOUBT, False, Action.RETRY),
]


@pytest.mark.parametrize(("outcome", "destructive", "action"), DECISIONS)
def test_decision_table(outcome: Outcome, destructive: bool, action: Action) -> None:
    assert decide(outcome, destructive=destructive) is action


def test_the_table_covers_every_outcome_both_ways() -> None:
    assert {(o, d) for o, d, _ in DECISIONS} == {(o, d) for o in Outcome for d in (True, False)}


class Script:
    """An API call that fails with the given errors in turn, then returns ``"ok"``."""

    def __init__(self, *errors: ApiError, clock: FakeClock | None = None, cost: float = 0.0):
        self.errors = list(errors)
        self.calls = 0
        self.clock = clock
        self.cost = cost

    async def __call__(self) -> str:
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.cost)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def forever(make: type[ApiError], n: int = 1000, **kw: float) -> list[ApiError]:
    return [make("boom", endpoint=EP, **kw) for _ in range(n)]  # type: ignore[arg-type]


async def run(
    fn: Script,
    *,
    destructive: bool = False,
    policy: RetryPolicy | None = None,
    budget: RetryBudget | None = None,
    clock: FakeClock | None = None,
    seed: int = 1,
) -> str:
    return await call_with_retries(
        fn,
        destructive=destructive,
        policy=policy or RetryPolicy(),
        budget=budget or RetryBudget(),
        clock=clock or FakeClock(),
        rng=random.Random(seed),
    )


# -- backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry", "ceiling"), [(0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (500, 30.0)]
)
def test_backoff_ceiling_doubles_up_to_the_cap(retry: int, ceiling: float) -> None:
    assert backoff_ceiling(RetryPolicy(base=0.5, cap=30.0), retry) == ceiling


def test_full_jitter_stays_within_zero_and_the_ceiling_and_spreads() -> None:
    policy = RetryPolicy()
    rng = random.Random(42)
    for retry in range(10):
        ceiling = backoff_ceiling(policy, retry)
        waits = [backoff(policy, retry, rng) for _ in range(2000)]
        assert all(0.0 <= w <= ceiling for w in waits)
        # Full jitter: the whole range is used, not just the top of it.
        assert min(waits) < 0.05 * ceiling
        assert max(waits) > 0.95 * ceiling


async def test_the_sleeps_are_the_seeded_jitter_on_the_injected_clock() -> None:
    clock = FakeClock()
    fn = Script(*forever(NotSentError, 3))
    assert await run(fn, clock=clock, seed=7) == "ok"
    rng, policy = random.Random(7), RetryPolicy()
    assert clock.slept == [backoff(policy, n, rng) for n in range(3)]


# -- attempts and deadline ----------------------------------------------------------------


async def test_gives_up_after_the_attempts_and_raises_the_last_error_unchanged() -> None:
    errors = forever(NotSentError, 10)
    fn = Script(*errors)
    with pytest.raises(NotSentError) as caught:
        await run(fn, policy=RetryPolicy(attempts=4))
    assert fn.calls == 4
    assert caught.value is errors[3]
    assert caught.value.outcome is Outcome.NOT_SENT


async def test_no_retry_starts_past_the_deadline() -> None:
    # Each attempt takes 1 s and each wait is exactly 3 s (Retry-After, no jitter): attempts
    # start at 0, 4, 8; a fourth would start at 12 > 10.
    clock = FakeClock()
    fn = Script(*forever(ThrottledError, retry_after=3.0), clock=clock, cost=1.0)
    policy = RetryPolicy(attempts=100, base=0.0, deadline=10.0)
    started = clock.monotonic()
    with pytest.raises(ThrottledError):
        await run(fn, policy=policy, clock=clock)
    assert fn.calls == 3
    assert clock.slept == [3.0, 3.0]
    assert clock.monotonic() - started <= policy.deadline


async def test_retry_after_is_honoured_and_on_throttled_runs_before_the_wait() -> None:
    clock = FakeClock()
    seen: list[str] = []
    throttle = ThrottledError("slow down", endpoint=EP, status=429, retry_after=7.0)

    async def on_throttled(error: ApiError) -> None:
        assert error is throttle
        seen.append(f"throttled at {clock.monotonic()}")

    def on_retry(error: ApiError, attempt: int) -> None:
        seen.append(f"retry after attempt {attempt}")

    result = await call_with_retries(
        Script(throttle),
        destructive=True,
        policy=RetryPolicy(base=0.5),
        budget=RetryBudget(),
        clock=clock,
        rng=random.Random(1),
        on_throttled=on_throttled,
        on_retry=on_retry,
    )
    assert result == "ok"
    assert clock.slept == [7.0]  # the jitter (at most 0.5 s) is below Retry-After
    assert seen == ["throttled at 0.0", "retry after attempt 1"]


async def test_on_throttled_runs_even_when_the_call_gives_up() -> None:
    calls: list[ApiError] = []

    async def on_throttled(error: ApiError) -> None:
        calls.append(error)

    with pytest.raises(ThrottledError):
        await call_with_retries(
            Script(*forever(ThrottledError, status=503)),  # bare 503s: the attempt cap holds
            destructive=False,
            policy=RetryPolicy(attempts=2),
            budget=RetryBudget(),
            clock=FakeClock(),
            on_throttled=on_throttled,
        )
    assert len(calls) == 2


# -- what is never retried ----------------------------------------------------------------


async def test_in_doubt_on_a_destructive_call_is_never_retried() -> None:
    fn = Script(*forever(InDoubtError))
    with pytest.raises(InDoubtError):
        await run(fn, destructive=True)
    assert fn.calls == 1


async def test_in_doubt_on_a_read_is_retried() -> None:
    fn = Script(*forever(InDoubtError, 2))
    assert await run(fn, destructive=False) == "ok"
    assert fn.calls == 3


@pytest.mark.parametrize("error", [RejectedError, AuthenticationError, SessionExpiredError])
@pytest.mark.parametrize("destructive", [True, False])
async def test_final_outcomes_are_never_retried(error: type[ApiError], destructive: bool) -> None:
    fn = Script(*forever(error))
    clock = FakeClock()
    with pytest.raises(error):
        await run(fn, destructive=destructive, clock=clock)
    assert fn.calls == 1
    assert clock.slept == []


async def test_other_exceptions_propagate_at_once() -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an API answer")

    with pytest.raises(ValueError, match="a bug"):
        await call_with_retries(
            fn, destructive=False, policy=RetryPolicy(), budget=RetryBudget(), clock=FakeClock()
        )
    assert calls == 1


# -- the run-wide budget ------------------------------------------------------------------


async def test_budget_caps_retries_across_the_run() -> None:
    budget = RetryBudget(ratio=0.2, reserve=10)
    total = 0
    for _ in range(100):
        fn = Script(*forever(NotSentError))
        with pytest.raises(NotSentError):
            await run(fn, budget=budget)
        total += fn.calls
    assert budget.first_attempts == 100
    assert budget.retries == 30  # 0.2 × 100 + 10, all of it used
    assert total == 100 + 30
    assert budget.refused > 0


async def test_an_empty_budget_gives_up_after_the_first_attempt() -> None:
    budget = RetryBudget(ratio=0.0, reserve=0)
    fn = Script(*forever(NotSentError))
    with pytest.raises(NotSentError):
        await run(fn, budget=budget)
    assert fn.calls == 1
    assert budget.retries == 0
    assert budget.refused == 1


async def test_retries_that_do_not_happen_cost_no_budget() -> None:
    budget = RetryBudget(ratio=0.0, reserve=5)
    with pytest.raises(NotSentError):
        await run(Script(*forever(NotSentError)), budget=budget, policy=RetryPolicy(attempts=3))
    assert budget.retries == 2  # the third failure ended the call, it did not spend a retry
    with pytest.raises(RejectedError):
        await run(Script(*forever(RejectedError)), budget=budget)
    assert budget.retries == 2


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"base": -1.0}, {"cap": -1.0}, {"deadline": -1.0}]
)
def test_impossible_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


async def test_budget_holds_for_concurrent_calls() -> None:
    budget = RetryBudget(ratio=0.2, reserve=10)
    scripts = [Script(*forever(NotSentError)) for _ in range(100)]
    policy = RetryPolicy(deadline=1e9)
    clock = FakeClock()

    async def one(fn: Script) -> None:
        with pytest.raises(NotSentError):
            await run(fn, budget=budget, policy=policy, clock=clock)

    async with anyio.create_task_group() as tg:
        for fn in scripts:
            tg.start_soon(one, fn)
    assert budget.retries <= 0.2 * 100 + 10
    assert sum(fn.calls for fn in scripts) == 100 + budget.retries


async def test_retries_after_overload_do_not_spend_the_budget() -> None:
    """A 429 (or a 503 with Retry-After) is retried outside the budget; a bare 503 is a
    sporadic error and spends it."""
    budget = RetryBudget(ratio=0.0, reserve=1)
    assert await run(Script(*forever(ThrottledError, n=4, status=429)), budget=budget) == "ok"
    overloaded = forever(ThrottledError, n=2, status=503, retry_after=0.5)
    assert await run(Script(*overloaded), budget=budget) == "ok"
    assert (budget.retries, budget.overload_retries) == (0, 6)
    bare = forever(ThrottledError, n=2, status=503)
    with pytest.raises(ThrottledError):
        await run(Script(*bare), budget=budget)  # one retry from the reserve, then refused
    assert (budget.retries, budget.refused) == (1, 1)


async def test_overload_answers_count_against_no_attempt_cap_only_the_deadline() -> None:
    policy = RetryPolicy(attempts=3, base=0.1, cap=1.0, deadline=60.0)
    fn = Script(*forever(ThrottledError, n=20, status=429))
    assert await run(fn, policy=policy) == "ok"
    assert fn.calls == 21
    # Sporadic errors still stop at the cap, 429s in between or not.
    mixed = [ThrottledError("boom", endpoint=EP, status=429), *forever(NotSentError, n=5)]
    fn = Script(*mixed)
    with pytest.raises(NotSentError):
        await run(fn, policy=policy)
    assert fn.calls == 4  # one 429 and three counted attempts
    # The deadline bounds a server that never stops throttling.
    clock = FakeClock()
    fn = Script(*forever(ThrottledError, status=429, retry_after=5.0), clock=clock, cost=1.0)
    with pytest.raises(ThrottledError):
        await run(fn, policy=policy, clock=clock)
    assert clock.monotonic() <= 60.0 + 1.0


def test_after_overload_the_backoff_stops_growing_but_retry_after_still_holds() -> None:
    policy = RetryPolicy(base=0.5, cap=30.0)
    rng = random.Random(3)
    throttle = ThrottledError("slow down", endpoint=EP, status=429)
    assert max(wait_after(throttle, policy, 10, rng) for _ in range(200)) <= 0.5 * 2**2
    told = ThrottledError("slow down", endpoint=EP, status=429, retry_after=9.0)
    assert wait_after(told, policy, 10, rng) >= 9.0
    bare = ThrottledError("unavailable", endpoint=EP, status=503)  # a sporadic error
    assert max(wait_after(bare, policy, 10, rng) for _ in range(200)) > 0.5 * 2**2
