"""Rate limits: window bound, long-run rate, poll share, the adaptive rate, pauses, concurrency.

The pure ``TokenBucket`` is driven with explicit times; the async ``RateLimiter`` runs on a
``FakeClock`` (only its leader ever sleeps, so fake time stays exact with many waiters).
``fail_after`` guards only against a hang; nothing here asserts on real time.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence

import anyio
import anyio.lowlevel
import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import ApiError
from orchestrator.model import Outcome
from orchestrator.run.adaptive import AdaptiveRate, Signal
from orchestrator.run.limits import Kind, Limits, RateLimiter, TokenBucket, signal_of


def busiest_second(times: Sequence[float]) -> int:
    """Return the most requests in any closed one-second window [t, t + 1]."""
    ts = sorted(times)
    # The busiest window can be taken to start at a request.
    return max(bisect.bisect_right(ts, t + 1.0) - i for i, t in enumerate(ts))


def drain(bucket: TokenBucket, n: int, arrivals: Sequence[float] | None = None) -> list[float]:
    """Send ``n`` requests as early as the bucket allows (each no earlier than its arrival)."""
    times: list[float] = []
    t = 0.0
    for i in range(n):
        t = max(t, arrivals[i] if arrivals else 0.0)
        t = bucket.ready_at(t)
        bucket.take(t)
        times.append(t)
    return times


# -- the pure bucket ----------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.5, 1.0, 5.0, 10.0, 37.5])
@pytest.mark.parametrize("burst", [1, 3, 8])
def test_no_second_carries_more_than_rate_plus_burst(rate: float, burst: int) -> None:
    times = drain(TokenBucket(rate, burst=burst), 1000)
    assert busiest_second(times) <= rate + burst


def test_the_window_bound_holds_for_bursty_arrivals() -> None:
    rng = random.Random(3)
    arrivals, t = [], 0.0
    for _ in range(3000):
        t += rng.choice([0.0, 0.0, 0.01, 0.5, 2.0])  # clumps and gaps
        arrivals.append(t)
    times = drain(TokenBucket(10.0, burst=3), 3000, arrivals)
    assert busiest_second(times) <= 13


@pytest.mark.parametrize("rate", [0.7, 5.0, 20.0])
def test_the_long_run_rate_is_the_configured_rate(rate: float) -> None:
    times = drain(TokenBucket(rate, burst=3), 2000)
    measured = (len(times) - 3) / (times[-1] - times[0])  # the first 3 are the burst
    assert measured == pytest.approx(rate, rel=0.01)


def test_the_burst_at_start_is_bounded() -> None:
    bucket = TokenBucket(10.0, burst=3)
    times = drain(bucket, 5)
    assert times[:3] == [0.0, 0.0, 0.0]
    assert times[3] == pytest.approx(0.1)
    assert times[4] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no request may go"):
        bucket.take(0.2)  # the token of 0.2 s went just now


def overload(bucket: TokenBucket, now: float, retry_after: float | None, n: int = 40) -> None:
    """Report ``n`` throttles at ``now``: a storm, well over the sustained-overload ratio."""
    for _ in range(n):
        bucket.observe(now, Signal.THROTTLE, retry_after)


def test_a_storm_pauses_the_fleet_and_cuts_the_rate_to_what_was_accepted() -> None:
    bucket = TokenBucket(10.0, burst=3)
    for i in range(60):  # a calm minute at 1/s: the server accepted 1 request a second
        bucket.observe(float(i), Signal.OK)
    overload(bucket, 60.0, retry_after=4.0)
    assert bucket.cooldown_until == 64.0
    assert bucket.rate(64.0) == pytest.approx(1.0, rel=0.05)
    times = drain(bucket, 11, arrivals=[60.0] * 11)
    assert times[0] >= 64.0  # nothing during the pause
    assert (times[-1] - times[0]) == pytest.approx(10.0, rel=0.05)  # then at the cut rate


def test_pauses_never_add_up_and_take_the_longest_retry_after() -> None:
    bucket = TokenBucket(10.0)
    overload(bucket, 100.0, retry_after=5.0)
    assert bucket.throttle(100.1, retry_after=2.0) == 105.0
    assert bucket.throttle(100.2, retry_after=None) == 105.0
    assert bucket.throttle(100.3, retry_after=30.0) == 130.3  # the longest one asked
    assert bucket.adaptive.pauses == 1
    assert bucket.adaptive.paused_s == pytest.approx(30.3)
    assert bucket.ready_at(100.5) == 130.3


def test_without_retry_after_pauses_double_and_successes_decay_the_streak() -> None:
    bucket = TokenBucket(10.0)
    now, pauses = 0.0, []
    for _ in range(8):
        overload(bucket, now, retry_after=None)
        pauses.append(bucket.cooldown_until - now)
        now = bucket.cooldown_until + 0.5  # the next storm comes soon after sending resumed
    assert pauses == [1, 2, 4, 8, 16, 32, 60, 60]
    for i in range(60 * 8):  # successes, not time, end the streak: one step per 60
        bucket.observe(now + i * 0.01, Signal.OK)
    overload(bucket, now + 10.0, retry_after=None)
    assert bucket.cooldown_until - (now + 10.0) == 1.0


def test_retry_after_is_capped() -> None:
    bucket = TokenBucket(1.0)
    overload(bucket, 0.0, retry_after=1e9)
    assert bucket.cooldown_until == 600.0


def test_cuts_stop_at_the_floor() -> None:
    bucket = TokenBucket(100.0)
    now = 0.0
    for _ in range(20):
        overload(bucket, now, retry_after=0.0)
        now += 1.0
    assert bucket.rate(now) == bucket.min_rate == 5.0
    assert TokenBucket(2.0).min_rate == 0.2
    assert TokenBucket(0.1).min_rate == 0.1  # never above the configured rate


# -- the adaptive rate, from sequences of answers -------------------------------------------

OK, ERR, THR = Signal.OK, Signal.ERROR, Signal.THROTTLE


def play(rate: AdaptiveRate, pattern: Sequence[Signal], n: int, *, per_s: float = 20.0) -> float:
    """Feed ``n`` answers cycling through ``pattern``, ``per_s`` a second; return the end."""
    now = 0.0
    for i in range(n):
        now = i / per_s
        rate.observe(now, pattern[i % len(pattern)])
    return now


@pytest.mark.parametrize(
    ("name", "pattern", "rate", "pauses", "cuts"),
    [
        # 2% sporadic 5xx / dropped connections: that request's problem only.
        ("sporadic 5xx at 2%", [ERR] + [OK] * 49, 20.0, 0, 0),
        # Half the answers are errors: the server is down, so the fleet waits (the rate stays).
        ("server down", [ERR, OK], 20.0, 1, 0),
        # A single 429 now and then: cut once, then back with successes; never a pause.
        ("a 429 every 200 answers", [THR] + [OK] * 199, 20.0, 0, 10),
    ],
)
def test_signal_sequences(
    name: str, pattern: list[Signal], rate: float, pauses: int, cuts: int
) -> None:
    adaptive = AdaptiveRate(20.0)
    play(adaptive, pattern, 2000)
    assert adaptive.rate == pytest.approx(rate, rel=0.02), name
    assert adaptive.pauses == pauses, name
    assert adaptive.cuts == cuts, name
    if pauses == 0:
        assert adaptive.paused_s == 0.0


def test_a_429_storm_then_a_recovery() -> None:
    adaptive = AdaptiveRate(20.0)
    end = play(adaptive, [OK], 200)
    for i in range(40):  # a storm of 429s without Retry-After
        adaptive.observe(end + i * 0.01, THR)
    assert adaptive.pauses == 1
    assert adaptive.paused_s == 1.0  # 1 s without Retry-After, the first of a streak
    assert adaptive.rate < 20.0 * 0.7
    for i in range(3000):  # the provider copes again: the rate climbs back with successes
        adaptive.observe(end + 2.0 + i * 0.05, OK)
    assert adaptive.rate == 20.0
    assert adaptive.pauses == 1


def test_background_429s_that_do_not_come_from_our_rate_are_tolerated() -> None:
    """10% of answers are 429s whatever the rate: after a cut that did not help, the rate
    is restored and holds."""
    rng = random.Random(7)
    adaptive = AdaptiveRate(20.0)
    rates = []
    for i in range(5000):
        adaptive.observe(i / 20.0, THR if rng.random() < 0.10 else OK)
        rates.append(adaptive.rate)
    assert adaptive.undone >= 1
    assert adaptive.tolerance > 0.05
    assert sum(rates[1000:]) / len(rates[1000:]) > 0.8 * 20.0
    assert adaptive.pauses == 0


@pytest.mark.parametrize("limit", [5.0, 10.0, 15.0])
def test_behind_a_provider_limit_the_rate_converges_to_it(limit: float) -> None:
    """A server bucket of ``limit``/s (burst one second's worth) answering 429 when empty:
    the achieved rate ends near the limit with few 429s, and the tolerance stays 0."""
    bucket = TokenBucket(20.0, burst=3)
    server, last = limit, 0.0
    t, accepted, throttled = 0.0, 0, 0
    while accepted < 2000:
        t = bucket.ready_at(t)
        bucket.take(t)
        server = min(limit, server + (t - last) * limit)
        last = t
        if server >= 1.0:
            server -= 1.0
            accepted += 1
            bucket.observe(t, OK)
        else:
            throttled += 1
            bucket.observe(t, THR, 1.0)
    assert accepted / t == pytest.approx(limit, rel=0.10)
    assert throttled / (accepted + throttled) < 0.04
    assert bucket.adaptive.tolerance == 0.0


@pytest.mark.parametrize(
    ("status", "outcome", "retry_after", "signal"),
    [
        (None, None, None, OK),
        (429, Outcome.THROTTLED, None, THR),
        (429, Outcome.THROTTLED, 2.0, THR),
        (503, Outcome.THROTTLED, 2.0, THR),  # a 503 with Retry-After: overload
        (503, Outcome.THROTTLED, None, ERR),  # a bare 503: that request's problem
        (200, Outcome.THROTTLED, None, THR),  # "rate limit exceeded" in a 200 body
        (502, Outcome.IN_DOUBT, None, ERR),
        (None, Outcome.NOT_SENT, None, ERR),
        (400, Outcome.REJECTED, None, OK),
        (401, Outcome.SESSION, None, OK),
    ],
)
def test_what_each_answer_says(
    status: int | None, outcome: Outcome | None, retry_after: float | None, signal: Signal
) -> None:
    error = None
    if outcome is not None:
        error = ApiError("x", endpoint="get/images", status=status, retry_after=retry_after)
        error.outcome = outcome
    assert signal_of(error) is signal


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0.0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1.0, burst=0)


# -- the async limiter on a fake clock ----------------------------------------------------

Grant = tuple[float, Kind]


async def simulate(
    limiter: RateLimiter,
    workers: dict[Kind, int],
    grants: int,
    on_grant: Callable[[float, Kind], None] | None = None,
) -> list[Grant]:
    """Run ``workers`` tasks per kind, each acquiring in a loop, until ``grants`` went out."""
    got: list[Grant] = []
    with anyio.fail_after(30):  # a hang guard only
        async with anyio.create_task_group() as tg:

            async def worker(kind: Kind) -> None:
                while True:
                    t = await limiter.acquire(kind)
                    got.append((t, kind))
                    if len(got) >= grants:
                        tg.cancel_scope.cancel()
                    if on_grant is not None:
                        on_grant(t, kind)
                    await anyio.lowlevel.checkpoint()  # the request itself

            for kind, count in workers.items():
                for _ in range(count):
                    tg.start_soon(worker, kind)
    return got


async def test_calls_are_not_starved_by_500_pollers_and_polls_keep_their_share() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, burst=3, clock=clock, poll_share=0.25)
    got = await simulate(limiter, {"poll": 500, "call": 20}, grants=2000)
    polls = sum(1 for _, kind in got if kind == "poll")
    assert polls <= 0.25 * len(got) + 3  # the share, plus the start burst at most
    assert polls >= 0.25 * len(got) - 3  # and polls do get their share
    times = [t for t, _ in got]
    assert busiest_second(times) <= 13
    measured = (len(times) - 3) / (max(times) - min(times))
    assert measured == pytest.approx(10.0, rel=0.01)


async def test_polls_use_idle_capacity() -> None:
    limiter = RateLimiter(10.0, burst=3, clock=FakeClock(), poll_share=0.25)
    got = await simulate(limiter, {"poll": 50}, grants=503)
    times = [t for t, _ in got]
    assert (len(times) - 3) / (max(times) - min(times)) == pytest.approx(10.0, rel=0.01)


async def test_a_cooldown_holds_every_waiting_acquirer() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, burst=3, clock=clock)
    throttled_at: list[float] = []

    def on_grant(t: float, kind: Kind) -> None:
        if t >= 1.0 and not throttled_at:  # this request's answer is a 429 with Retry-After
            throttled_at.append(clock.monotonic())
            for _ in range(40):  # a storm: sustained overload pauses every acquirer
                limiter.throttled(retry_after=5.0)

    got = await simulate(limiter, {"call": 30, "poll": 30}, grants=200, on_grant=on_grant)
    [start] = throttled_at
    assert not [t for t, _ in got if start < t < start + 5.0]
    assert any(t >= start + 5.0 for t, _ in got)  # sending resumed
    assert limiter.throttles == 40
    assert limiter.bucket.adaptive.pauses == 1
    assert limiter.cooldown_total == 5.0


async def test_throttles_reported_together_do_not_stack_in_the_limiter() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock)
    for retry_after in (3.0, 8.0, None, 2.0) * 10:
        limiter.throttled(retry_after)
    assert limiter.cooldown_remaining == 8.0
    assert limiter.rate < 10.0
    assert await limiter.acquire() == 8.0


async def test_a_cancelled_waiter_gives_its_place_up_and_others_go_on() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, burst=1, clock=clock)
    for _ in range(40):
        limiter.throttled(retry_after=10.0)
    times: list[float] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def waiter(scope: anyio.CancelScope) -> None:
                with scope:
                    times.append(await limiter.acquire("call"))

            first = anyio.CancelScope()
            tg.start_soon(waiter, first)  # the first to wait leads; it is cancelled
            for _ in range(3):
                tg.start_soon(waiter, anyio.CancelScope())
            await anyio.lowlevel.checkpoint()
            assert limiter.waiting("call") == 4
            first.cancel()
    assert len(times) == 3
    assert min(times) >= 10.0
    assert limiter.waiting("call") == 0


async def test_fast_path_and_counters() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, burst=2, clock=clock)
    assert await limiter.acquire("call") == 0.0
    assert await limiter.acquire("poll") == 0.0
    assert await limiter.acquire("call") == 0.5
    assert limiter.granted == {"call": 2, "poll": 1}
    assert limiter.rate == 2.0
    with pytest.raises(ValueError, match="poll_share"):
        RateLimiter(1.0, clock=clock, poll_share=1.0)


async def test_limits_bundle() -> None:
    limits = Limits.create(concurrency=4, rate=5.0, clock=FakeClock())
    assert limits.concurrency.total_tokens == 4
    assert limits.requests.bucket.configured == 5.0
    with pytest.raises(ValueError, match="concurrency"):
        Limits.create(concurrency=0, rate=5.0, clock=FakeClock())
