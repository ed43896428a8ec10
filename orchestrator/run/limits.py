"""Request rate, fleet-wide cooldown after 429/503, and the concurrency cap.

``TokenBucket`` is the pure core: no clock and no awaits; every method takes ``now``
(monotonic seconds), so tests drive it with explicit times. ``RateLimiter`` is the thin async
shell that every API request of a run passes through; ``Limits`` bundles it with the
concurrency cap.

Why not aiolimiter (DESIGN.md names it here): ``AsyncLimiter`` reads ``loop.time()`` and
schedules wake-ups with ``loop.call_at``, so it cannot run on an injected clock and could only
be tested by waiting in real time; its rate is fixed at construction (AIMD needs to change it);
it has no notion of a cooldown that pauses every waiter, nor of a share for status polls.
Wrapping it would leave all of that to be written anyway, so this small bucket replaces it.

The bucket holds at most ``burst`` tokens and refills at the current rate (never above the
configured one), so any one-second window carries at most ``rate + burst`` requests — the
fix for ``AsyncLimiter(R, 1)`` letting about 2·R through in its first second.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import anyio

from orchestrator.model import Clock

Kind = Literal["call", "poll"]

# Float slack when comparing token counts, so a wait shorter than the clock's resolution
# cannot spin forever on "almost one token".
_EPS = 1e-9


class TokenBucket:
    """A token bucket with AIMD and a cooldown, on explicit times.

    - Starts full (``burst`` tokens): the burst at start is bounded by ``burst``.
    - AIMD: ``throttle`` multiplies the rate by ``decrease`` (floor ``min_rate``: 5% of the
      configured rate but at least 0.2/s, never above the configured rate); after the
      cooldown the rate grows by ``increase`` × configured rate per second, up to configured.
    - Cooldown: ``throttle`` pauses everything for ``retry_after`` seconds when given (capped
      at ``max_retry_after``), else 1 s doubling per consecutive throttle up to
      ``cooldown_cap``. Throttles during an active cooldown are the same episode: they cut the
      rate no further and only extend the end to the latest one asked, never add up.
    - No tokens accrue during a cooldown, and a throttle leaves at most one, so sending
      resumes with one request, then at the cut rate.

    Raises ``ValueError`` for a rate that is not above zero or a burst below one.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 3,
        now: float = 0.0,
        decrease: float = 0.5,
        increase: float = 0.05,
        cooldown_base: float = 1.0,
        cooldown_cap: float = 60.0,
        max_retry_after: float = 600.0,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be above zero")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.configured = rate
        self.burst = burst
        self.min_rate = min(rate, max(0.05 * rate, 0.2))
        self._decrease = decrease
        self._increase = increase * rate
        self._cooldown_base = cooldown_base
        self._cooldown_cap = cooldown_cap
        self._max_retry_after = max_retry_after
        self._tokens = float(burst)
        self._updated = now
        self._base = rate  # the rate right after the last cut
        self.cooldown_until = now
        self._streak = 0
        self.throttles = 0
        """Throttles reported."""
        self.cuts = 0
        """Rate cuts (one per throttle episode)."""

    def rate(self, now: float) -> float:
        """Return the rate in requests/second at ``now``."""
        since = now - self.cooldown_until
        if since <= 0:
            return self._base
        return min(self.configured, self._base + self._increase * since)

    def _refill(self, now: float) -> None:
        start = max(self._updated, self.cooldown_until)
        if now > start:
            # The rate at the start of the interval: it only grows while recovering, so this
            # under-counts slightly, never over.
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

    def throttle(self, now: float, retry_after: float | None) -> float:
        """Record a 429/503 seen at ``now``; return when the cooldown ends."""
        self._refill(now)
        self.throttles += 1
        if now >= self.cooldown_until:  # a new episode, not an echo of the current one
            if now - self.cooldown_until > self._cooldown_cap:
                self._streak = 0  # a quiet minute ends a run of consecutive throttles
            self._streak += 1
            self._base = max(self.min_rate, self.rate(now) * self._decrease)
            self.cuts += 1
            self._tokens = min(self._tokens, 1.0)
        if retry_after is not None:
            pause = min(max(retry_after, 0.0), self._max_retry_after)
        else:
            doubling = self._cooldown_base * 2 ** min(self._streak - 1, 32)
            pause = min(self._cooldown_cap, doubling)
        self.cooldown_until = max(self.cooldown_until, now + pause)
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
    def throttles(self) -> int:
        """How many 429/503 answers were reported with ``throttled``."""
        return self.bucket.throttles

    @property
    def cooldown_remaining(self) -> float:
        """Seconds until the current cooldown ends (0 when none)."""
        return max(0.0, self.bucket.cooldown_until - self._clock.monotonic())

    def waiting(self, kind: Kind) -> int:
        """How many acquirers of ``kind`` are waiting."""
        return len(self._queues[kind])

    def throttled(self, retry_after: float | None) -> None:
        """Report a 429/503: cut the rate and pause every acquirer until the cooldown ends
        (``retry_after`` seconds when the server said, else a doubling backoff)."""
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
