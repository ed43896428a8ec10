"""The retry policy: one pure decision over outcome classes, a run-wide budget, and a wrapper.

This is the only module that imports tenacity (DESIGN.md, "Layout").

- ``decide`` maps an attempt's ``Outcome`` (DESIGN.md, "Outcome classes") to an ``Action``.
  Only ``RETRY`` and ``COOLDOWN_THEN_RETRY`` are ever retried here.
- ``RetryBudget`` caps retries for the whole run at ``ratio`` × first attempts + ``reserve``,
  so an outage does not turn per-call retries into a retry storm ("Pitfalls": retry storms).
  A retry after an overload signal (a 429, a 503 with ``Retry-After``: ``limits.signal_of``)
  does not spend it: that retry waits for the fleet's rate, which the overload already cut
  (``adaptive.py``), so it adds no load. Nor does it count against a call's ``attempts``:
  a 429 says "not now", and only the ``deadline`` bounds how long a call waits for "now". A
  provider that answers a steady share of 429s must not exhaust the budget that sporadic
  errors need, nor fail a pre-flight read that met a burst of 429s six times.
- ``call_with_retries`` runs one API call under a ``RetryPolicy``: full-jitter exponential
  backoff, at most ``attempts`` attempts, an overall ``deadline``, sleeps on the injected clock
  and at least the server's ``Retry-After`` after a throttle. When it gives up it re-raises the
  last ``ApiError`` unchanged, so callers read its ``.outcome``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from orchestrator.errors import ApiError
from orchestrator.model import Clock, Outcome
from orchestrator.run.adaptive import Signal
from orchestrator.run.limits import signal_of

T = TypeVar("T")

# Keeps base * 2**n finite however many retries a policy allows.
_MAX_EXPONENT = 64


class Action(enum.Enum):
    """What to do after one attempt."""

    RETRY = "retry"
    """Resend after a backoff: not sent, or in doubt on a call that is safe to repeat."""
    COOLDOWN_THEN_RETRY = "cooldown_then_retry"
    """Throttled (429/503): resent after at least the server's ``Retry-After``; whether the
    fleet slows down or pauses is the limiter's call (``adaptive.py``)."""
    FINAL = "final"
    """Rejected, or a session error that already had its one refresh and replay."""
    IN_DOUBT = "in_doubt"
    """A destructive call may have been processed: never resent here; the caller decides."""
    DONE = "done"
    """Accepted."""


RETRYABLE = frozenset({Action.RETRY, Action.COOLDOWN_THEN_RETRY})


def decide(outcome: Outcome, *, destructive: bool) -> Action:
    """Return what to do after an attempt with ``outcome``; ``destructive`` is set for
    ``set/reinstall`` (a resend may wipe a disk twice) and clear for get/auth, get/images,
    get/power and get/details, which are safe to repeat."""
    if outcome is Outcome.ACCEPTED:
        return Action.DONE
    if outcome is Outcome.NOT_SENT:
        return Action.RETRY
    if outcome is Outcome.THROTTLED:
        return Action.COOLDOWN_THEN_RETRY
    if outcome is Outcome.IN_DOUBT:
        return Action.IN_DOUBT if destructive else Action.RETRY
    # REJECTED is final by definition. SESSION is final *here*: SessionBook.call has already
    # refreshed once and replayed once, so a second refusal will not be cured by a third try.
    return Action.FINAL


@dataclass(frozen=True)
class RetryPolicy:
    """How one call is retried: at most ``attempts`` attempts (the first included; attempts
    answered with an overload signal do not count, only the deadline bounds those), backoff
    ``base`` × 2**n seconds capped at ``cap`` with full jitter, and no attempt started after
    ``deadline`` seconds from the first. Raises ``ValueError`` for impossible values."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    deadline: float = 600.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base < 0 or self.cap < 0 or self.deadline < 0:
            raise ValueError("base, cap and deadline must not be negative")


def backoff_ceiling(policy: RetryPolicy, retry: int) -> float:
    """Return the largest wait before retry number ``retry`` (0 for the first retry):
    ``min(cap, base * 2**retry)``."""
    exponent: int = min(max(retry, 0), _MAX_EXPONENT)
    return min(policy.cap, policy.base * float(2**exponent))


def backoff(policy: RetryPolicy, retry: int, rng: random.Random) -> float:
    """Return a full-jitter wait: uniform between 0 and ``backoff_ceiling(policy, retry)``.

    Full jitter spreads the retries of many workers that failed together, so they do not
    return together (the jitter is drawn from ``rng`` so tests can seed it).
    """
    return rng.uniform(0.0, backoff_ceiling(policy, retry))


# After an overload signal the backoff stops growing at base × 2**this: the fleet's rate,
# which the limiter cut, answers for the load. A call that everyone waits on (the session
# refresh) must not sleep for tens of seconds while a burst of 429s, which only requests
# drain, waits for it.
OVERLOAD_MAX_EXPONENT = 2


def wait_after(error: ApiError, policy: RetryPolicy, retry: int, rng: random.Random) -> float:
    """Return how long to wait after ``error`` before retry number ``retry``: the jittered
    backoff (growing no further than ``OVERLOAD_MAX_EXPONENT`` after an overload signal), but
    never less than the server's ``retry_after`` on a throttle."""
    if signal_of(error) is Signal.THROTTLE:
        retry = min(retry, OVERLOAD_MAX_EXPONENT)
    wait = backoff(policy, retry, rng)
    if error.outcome is Outcome.THROTTLED and error.retry_after is not None:
        wait = max(wait, error.retry_after)
    return wait


class RetryBudget:
    """A run-wide allowance of retries: at any time, retries ≤ ``ratio`` × first attempts +
    ``reserve``. Every retry spends one; when none is left retryable failures are given up.

    Safe to share between all tasks of one event loop without a lock: ``record_first_attempt``
    and ``try_spend`` do not await, so no other task runs between their check and update.
    Not safe across OS threads. Raises ``ValueError`` for negative settings.
    """

    def __init__(self, ratio: float = 0.2, reserve: float = 10.0) -> None:
        if ratio < 0 or reserve < 0:
            raise ValueError("ratio and reserve must not be negative")
        self.ratio = ratio
        self.reserve = reserve
        self.first_attempts = 0
        self.retries = 0
        self.refused = 0
        """Retries the budget refused (failures given up because it was empty)."""
        self.overload_retries = 0
        """Retries after an overload signal, which the budget does not count."""

    @property
    def allowance(self) -> float:
        """How many retries the run may have made so far."""
        return self.ratio * self.first_attempts + self.reserve

    def record_first_attempt(self) -> None:
        """Count one new call (its first attempt), which earns ``ratio`` of a retry."""
        self.first_attempts += 1

    def try_spend(self) -> bool:
        """Spend one retry and return True, or return False when the budget is empty."""
        if self.retries + 1 > self.allowance:
            self.refused += 1
            return False
        self.retries += 1
        return True


def _error(state: RetryCallState) -> ApiError:
    # Only reached for failures the retry predicate accepted, which are ApiErrors.
    assert state.outcome is not None
    exc = state.outcome.exception()
    assert isinstance(exc, ApiError)
    return exc


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    destructive: bool,
    policy: RetryPolicy,
    budget: RetryBudget,
    clock: Clock,
    rng: random.Random | None = None,
    on_throttled: Callable[[ApiError], Awaitable[None]] | None = None,
    on_retry: Callable[[ApiError, int], None] | None = None,
) -> T:
    """Await ``fn()`` and return its result, retrying as ``decide`` allows.

    A retryable failure (not sent; throttled; in doubt on a non-destructive call) is retried
    after ``wait_after`` seconds slept on ``clock`` while attempts, the deadline and the
    ``budget`` allow. ``on_throttled(error)`` is awaited after *every* throttled attempt, even
    one that is not retried, before the wait (a run's limiter hears every answer through
    ``RateLimiter.report`` instead, and decides there whether the fleet slows or pauses).
    ``on_retry(error, attempt_number)`` is called just before each retry's sleep.

    Raises the last ``ApiError`` unchanged when the outcome is final, in doubt on a
    destructive call, or retries ran out; any other exception from ``fn`` (cancellation
    included) propagates at once.
    """
    rng = rng if rng is not None else random.Random()
    budget.record_first_attempt()
    started = clock.monotonic()

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, ApiError) and decide(exc.outcome, destructive=destructive) in (
            RETRYABLE
        )

    async def after(state: RetryCallState) -> None:
        error = _error(state)
        if on_throttled is not None and error.outcome is Outcome.THROTTLED:
            await on_throttled(error)

    def wait(state: RetryCallState) -> float:
        return wait_after(_error(state), policy, state.attempt_number - 1, rng)

    overloads = 0  # attempts answered with an overload signal: they count against no cap

    def stop(state: RetryCallState) -> bool:
        # tenacity computes the wait before asking whether to stop, so a retry whose sleep
        # would end past the deadline is not started. The budget is asked last, so it is
        # only spent on retries that really happen.
        nonlocal overloads
        overload = signal_of(_error(state)) is Signal.THROTTLE
        overloads += overload
        if state.attempt_number - overloads >= policy.attempts:
            return True
        if clock.monotonic() - started + state.upcoming_sleep > policy.deadline:
            return True
        if overload:
            budget.overload_retries += 1
            return False
        return not budget.try_spend()

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry(_error(state), state.attempt_number)

    retrying = AsyncRetrying(
        sleep=clock.sleep,
        stop=stop,
        wait=wait,
        retry=retry_if_exception(retryable),
        after=after,
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity returns the result or re-raises the error")
