"""Request rate, adaptive to the server's answers, and the concurrency cap.

``TokenBucket`` is the pure core: no clock and no awaits; every method takes ``now``
(monotonic seconds), so tests drive it with explicit times. Its rate is an ``AdaptiveRate``
(``adaptive.py``, which states the rule: a sporadic 5xx or dropped connection is that
request's problem; a 429 or a 503 with ``Retry-After`` cuts the fleet's rate; only sustained
overload pauses the whole fleet). ``RateLimiter`` is the thin async shell that every API
request of a run passes through and reports its answer to; ``Limits`` bundles it with the
concurrency cap.

Why not aiolimiter (DESIGN.md names it here): ``AsyncLimiter`` reads ``loop.time()`` and
schedules wake-ups with ``loop.call_at``, so it cannot run on an injected clock and could only
be tested by waiting in real time; its rate is fixed at construction (an adaptive rate needs to
change it); it has no notion of a pause that holds every waiter, nor of a share for status
polls. Wrapping it would leave all of that to be written anyway, so this small bucket
replaces it.

The bucket holds at most ``burst`` tokens and refills at the current rate (never above the
configured one), so any one-second window carries at most ``rate + burst`` requests — the
fix for ``AsyncLimiter(R, 1)`` letting about 2·R through in its first second.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import anyio

from orchestrator.errors import ApiError
from orchestrator.model import Clock, Outcome
from orchestrator.run.adaptive import AdaptiveRate, Signal, Tuning

Kind = Literal["call", "poll"]

# Float slack when comparing token counts, so a wait shorter than the clock's resolution
# cannot spin forever on "almost one token".
_EPS = 1e-9


def signal_of(error: ApiError | None) -> Signal:
    """Return what an attempt's result says about the server: ``None`` (success), a refusal
    or a session error is ``OK``; a 429, a 503 *with* ``Retry-After`` or a rate-limit text is
    ``THROTTLE``; a 503 without ``Retry-After``, any other 5xx and a failed transport are
    ``ERROR`` (that request's problem, not the fleet's)."""
    if error is None:
        return Signal.OK
    if error.outcome is Outcome.THROTTLED:
        if error.status == 503 and error.retry_after is None:
            return Signal.ERROR
        return Signal.THROTTLE
    if error.outcome in (Outcome.IN_DOUBT, Outcome.NOT_SENT):
        return Signal.ERROR
    return Signal.OK


class TokenBucket:
    """A token bucket whose rate adapts to the answers (``adaptive.py``), on explicit times.

    - Starts full (``burst`` tokens): the burst at start is bounded by ``burst``.
    - ``observe`` passes one answer to the ``AdaptiveRate``. A cut or a pause leaves at most
      one token, so sending goes on with one request, then at the new rate.
    - No tokens accrue during a fleet-wide pause (``cooldown_until``).

    Raises ``ValueError`` for a rate that is not above zero or a burst below one.
    """

    def __init__(
        self, rate: float, *, burst: int = 3, now: float = 0.0, tuning: Tuning | None = None
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.adaptive = AdaptiveRate(rate, tuning=tuning)
        self.configured = rate
        self.burst = burst
        self.min_rate = self.adaptive.min_rate
        self._tokens = float(burst)
        self._updated = now

    @property
    def cooldown_until(self) -> float:
        """When the current fleet-wide pause ends (in the past when there is none)."""
        return self.adaptive.pause_until

    @property
    def throttles(self) -> int:
        """Overload signals reported."""
        return self.adaptive.throttles

    @property
    def cuts(self) -> int:
        """Rate cuts (one per overload episode)."""
        return self.adaptive.cuts

    def rate(self, now: float) -> float:
        """Return the rate in requests/second at ``now`` (it changes only with answers)."""
        return self.adaptive.rate

    def _refill(self, now: float) -> None:
        start = max(self._updated, self.cooldown_until)
        if now > start:
            self._tokens = min(float(self.burst), self._tokens + (now - start) * self.rate(start))
        self._updated = max(self._updated, now)

    def ready_at(self, now: float) -> float:
        """Return the earliest time (≥ ``now``) at which one request may go."""
        self._refill(now)
        start = max(now, self.cooldown_until)
        missing = 1.0 - self._tokens
        if missing <= _EPS:
            return start
        return start + missing / self.rate(start)

    def take(self, now: float) -> None:
        """Let one request go at ``now``. Raises ``ValueError`` if none may go yet."""
        if self.ready_at(now) > now:
            raise ValueError("no request may go yet")
        self._tokens -= 1.0

    def observe(self, now: float, signal: Signal, retry_after: float | None = None) -> None:
        """Record one answer seen at ``now`` (refilled first, at the rate before it)."""
        self._refill(now)
        cuts = self.adaptive.cuts
        self.adaptive.observe(now, signal, retry_after)
        if self.adaptive.cuts != cuts:
            self._tokens = min(self._tokens, 1.0)

    def throttle(self, now: float, retry_after: float | None) -> float:
        """Record an overload signal (a 429) seen at ``now``; return when the fleet-wide pause
        ends (in the past when this one started none)."""
        self.observe(now, Signal.THROTTLE, retry_after)
        return self.cooldown_until


class _Waiter:
    __slots__ = ("event", "granted_at", "kind")

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.event = anyio.Event()
        self.granted_at: float | None = None


class RateLimiter:
    """The request-rate limiter shared by every API request of a run.

    ``acquire("call")`` for auth, images and reinstalls; ``acquire("poll")`` for readiness
    status polls. Waiters of each kind are served first come, first served. When both kinds
    wait, polls get ``poll_share`` of the grants (every 4th at 0.25) and calls the rest, so
    hundreds of pollers cannot starve the reinstalls; when only one kind waits it gets all
    the capacity (polls use idle capacity rather than a reserved slice). The total never
    exceeds the bucket's rate.

    One waiter at a time (the leader) sleeps on the clock until the next request may go,
    grants it to whoever is next, and hands the role on when its own turn came. So a
    ``FakeClock`` (which advances by every sleep) keeps exact time however many tasks wait,
    and a cooldown that starts while they wait holds all of them.

    No locks: state changes between awaits only, on one event loop. Not thread-safe.
    Raises ``ValueError`` for a ``poll_share`` outside [0, 1) and for bad bucket settings.
    """

    def __init__(
        self, rate: float, *, burst: int = 3, clock: Clock, poll_share: float = 0.25
    ) -> None:
        if not 0.0 <= poll_share < 1.0:
            raise ValueError("poll_share must be at least 0 and below 1")
        self.bucket = TokenBucket(rate, burst=burst, now=clock.monotonic())
        self._clock = clock
        self._share = poll_share
        self._credit = 0.0  # polls' earned share of contended grants
        self._queues: dict[Kind, deque[_Waiter]] = {"call": deque(), "poll": deque()}
        self._leading = False
        self.granted: dict[Kind, int] = {"call": 0, "poll": 0}
        """Requests let through, by kind."""

    @property
    def rate(self) -> float:
        """The current rate in requests/second (below the configured one after a 429)."""
        return self.bucket.rate(self._clock.monotonic())

    @property
    def configured(self) -> float:
        """The configured (highest) rate in requests/second."""
        return self.bucket.configured

    @property
    def throttles(self) -> int:
        """How many overload signals (429, 503 with ``Retry-After``) were reported."""
        return self.bucket.throttles

    @property
    def errors(self) -> int:
        """How many sporadic server errors (other 5xx, failed transports) were reported."""
        return self.bucket.adaptive.errors

    @property
    def cooldown_remaining(self) -> float:
        """Seconds until the current fleet-wide pause ends (0 when none)."""
        return max(0.0, self.bucket.cooldown_until - self._clock.monotonic())

    @property
    def cooldown_total(self) -> float:
        """Seconds of fleet-wide pause so far in this run."""
        return self.bucket.adaptive.paused_s

    def per_minute(self) -> tuple[int, int]:
        """Return (errors, throttles) reported in the last 60 seconds."""
        return self.bucket.adaptive.per_minute(self._clock.monotonic())

    def counters(self) -> dict[str, int]:
        """The run's provider figures for the journal and the reports: ``server_errors``
        (sporadic), ``rate_cuts``, ``fleet_pauses``, ``cooldown_s`` (seconds paused) and
        ``lowest_rate_pct`` (the lowest rate reached, in % of the configured one)."""
        adaptive = self.bucket.adaptive
        return {
            "server_errors": adaptive.errors,
            "rate_cuts": adaptive.cuts,
            "fleet_pauses": adaptive.pauses,
            "cooldown_s": round(adaptive.paused_s),
            "lowest_rate_pct": round(100.0 * adaptive.lowest / adaptive.configured),
        }

    def report(self, error: ApiError | None) -> None:
        """Report one attempt's result (``None`` for success), as ``signal_of`` reads it."""
        retry_after = error.retry_after if error is not None else None
        self.bucket.observe(self._clock.monotonic(), signal_of(error), retry_after)

    def waiting(self, kind: Kind) -> int:
        """How many acquirers of ``kind`` are waiting."""
        return len(self._queues[kind])

    def throttled(self, retry_after: float | None) -> None:
        """Report an overload signal (a 429): the rate is cut once per episode, and every
        acquirer pauses when overload is sustained (``adaptive.py``)."""
        self.bucket.throttle(self._clock.monotonic(), retry_after)

    def _pick(self) -> Kind:
        """Return which kind gets the next grant (at least one kind must be waiting)."""
        calls, polls = bool(self._queues["call"]), bool(self._queues["poll"])
        if calls and polls:
            self._credit += self._share
            if self._credit >= 1.0 - _EPS:
                self._credit -= 1.0
                return "poll"
            return "call"
        return "call" if calls else "poll"

    async def acquire(self, kind: Kind = "call") -> float:
        """Wait until one request of ``kind`` may go; return the clock's monotonic time at
        which it was let through. Cancellation while waiting gives the place up."""
        now = self._clock.monotonic()
        idle = not self._leading and not any(self._queues.values())
        if idle and self.bucket.ready_at(now) <= now:  # fast path: no queue, a token is there
            self.bucket.take(now)
            self.granted[kind] += 1
            return now
        me = _Waiter(kind)
        self._queues[kind].append(me)
        try:
            while me.granted_at is None:
                if not self._leading:
                    self._leading = True
                    try:
                        await self._lead(me)
                    finally:
                        self._leading = False
                        self._hand_over()
                else:
                    await me.event.wait()
                    if me.granted_at is None:  # woken to lead, not granted
                        me.event = anyio.Event()
        except BaseException:
            if me.granted_at is None:
                self._queues[kind].remove(me)
                self._hand_over()
            raise
        return me.granted_at

    async def _lead(self, me: _Waiter) -> None:
        while me.granted_at is None:
            now = self._clock.monotonic()
            at = self.bucket.ready_at(now)
            if at > now:
                # Re-checked after every sleep: a throttle may have started a cooldown.
                await self._clock.sleep(at - now)
                continue
            waiter = self._queues[self._pick()].popleft()
            self.bucket.take(now)
            self.granted[waiter.kind] += 1
            waiter.granted_at = now
            waiter.event.set()

    def _hand_over(self) -> None:
        # Wake one waiter to lead, so waiters never sit without anyone watching the clock.
        if self._leading:
            return
        for queue in self._queues.values():
            if queue:
                queue[0].event.set()
                return


@dataclass(frozen=True)
class Limits:
    """What the scheduler holds for a run: the request limiter and the concurrency cap
    (how many VPSes are in flight at once)."""

    requests: RateLimiter
    concurrency: anyio.CapacityLimiter

    @classmethod
    def create(
        cls,
        *,
        concurrency: int,
        rate: float,
        clock: Clock,
        burst: int = 3,
        poll_share: float = 0.25,
    ) -> Limits:
        """Build both from the manifest's rollout (``rate`` in requests/second).
        Raises ``ValueError`` for a concurrency below one or bad limiter settings."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        return cls(
            RateLimiter(rate, burst=burst, clock=clock, poll_share=poll_share),
            anyio.CapacityLimiter(concurrency),
        )
