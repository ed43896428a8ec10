"""Rate limits: window bound, long-run rate, poll share, AIMD, cooldown, concurrency bundle.

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
from orchestrator.run.limits import Kind, Limits, RateLimiter, TokenBucket


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


def test_a_429_cuts_the_rate_and_it_recovers_additively() -> None:
    bucket = TokenBucket(10.0, burst=3, decrease=0.5, increase=0.05)
    assert bucket.throttle(10.0, retry_after=2.0) == 12.0
    assert bucket.rate(11.0) == 5.0  # cut in half, flat during the cooldown
    assert bucket.rate(12.0) == 5.0
    assert bucket.rate(13.0) == pytest.approx(5.5)  # +5 % of 10/s per second
    assert bucket.rate(16.0) == pytest.approx(7.0)
    assert bucket.rate(22.0) == pytest.approx(10.0)
    assert bucket.rate(1000.0) == 10.0  # never above the configured rate
    # A new episode cuts from where the recovery got to.
    bucket.throttle(16.0, retry_after=0.0)
    assert bucket.rate(16.0) == pytest.approx(3.5)
    assert (bucket.throttles, bucket.cuts) == (2, 2)


def test_cuts_stop_at_the_floor() -> None:
    bucket = TokenBucket(100.0, increase=0.0)
    for i in range(20):
        bucket.throttle(float(i), retry_after=0.0)
    assert bucket.rate(20.0) == bucket.min_rate == 5.0
    assert TokenBucket(2.0).min_rate == 0.2
    assert TokenBucket(0.1).min_rate == 0.1  # never above the configured rate


def test_the_cut_rate_is_what_goes_out_after_the_cooldown() -> None:
    bucket = TokenBucket(10.0, burst=3, increase=0.0)
    drain(bucket, 3)
    bucket.throttle(0.0, retry_after=4.0)
    times = drain(bucket, 51)
    assert times[0] >= 4.0  # nothing during the cooldown
    measured = (len(times) - 1) / (times[-1] - times[0])
    assert measured == pytest.approx(5.0, rel=0.01)


def test_concurrent_throttles_do_not_stack() -> None:
    bucket = TokenBucket(10.0)
    assert bucket.throttle(100.0, retry_after=5.0) == 105.0
    assert bucket.throttle(100.1, retry_after=2.0) == 105.0
    assert bucket.throttle(100.2, retry_after=None) == 105.0
    assert bucket.throttle(100.3, retry_after=30.0) == 130.3  # the longest one asked
    assert bucket.cuts == 1  # one episode, one cut
    assert bucket.rate(110.0) == 5.0
    assert bucket.ready_at(100.5) == 130.3


def test_without_retry_after_the_cooldown_doubles_per_consecutive_throttle() -> None:
    bucket = TokenBucket(10.0, cooldown_base=1.0, cooldown_cap=60.0)
    now, pauses = 0.0, []
    for _ in range(8):
        end = bucket.throttle(now, retry_after=None)
        pauses.append(end - now)
        now = end + 0.5  # the next 429 comes soon after sending resumed
    assert pauses == [1, 2, 4, 8, 16, 32, 60, 60]
    # A quiet spell longer than the cap ends the streak.
    assert bucket.throttle(now + 61.0, retry_after=None) == now + 62.0


def test_retry_after_is_capped() -> None:
    assert TokenBucket(1.0, max_retry_after=600.0).throttle(0.0, retry_after=1e9) == 600.0


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
            limiter.throttled(retry_after=5.0)

    got = await simulate(limiter, {"call": 30, "poll": 30}, grants=200, on_grant=on_grant)
    [start] = throttled_at
    assert not [t for t, _ in got if start < t < start + 5.0]
    assert any(t >= start + 5.0 for t, _ in got)  # sending resumed
    assert limiter.throttles == limiter.bucket.cuts == 1
    # Right after the cooldown half the rate went out; 10 s later it had fully recovered.
    assert limiter.bucket.rate(start + 5.0) == 5.0
    assert limiter.bucket.rate(start + 15.0) == 10.0


async def test_throttles_reported_together_do_not_stack_in_the_limiter() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock)
    for retry_after in (3.0, 8.0, None, 2.0):
        limiter.throttled(retry_after)
    assert limiter.cooldown_remaining == 8.0
    assert limiter.rate == 5.0
    assert await limiter.acquire() == 8.0


async def test_a_cancelled_waiter_gives_its_place_up_and_others_go_on() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, burst=1, clock=clock)
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
