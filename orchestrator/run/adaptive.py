"""The adaptive request rate: tell a failing request from an overloaded server.

Pure, on explicit times (no clock, no awaits): ``limits.TokenBucket`` feeds it one ``Signal``
per answer and spends tokens at its ``rate``. The rule:

- **A sporadic server error is that request's problem.** A 5xx (a 503 *without*
  ``Retry-After`` included) or a dropped connection is retried by that request alone, with
  jittered backoff inside the run's retry budget (``retry.py``). The fleet neither slows down
  nor pauses for it.
- **An overload signal slows the fleet.** A 429, a 503 *with* ``Retry-After``, or a 200 whose
  error text says "rate limit" cuts the rate by ``beta``, once per episode (the next
  ``probation`` answers are the same episode). The throttled request itself waits at least
  its ``Retry-After`` before it is resent (per request, in ``retry.wait_after``).
- **A fleet-wide pause is only for sustained overload:** of the last ``probation`` answers
  (at least ``min_samples``), more than ``overload_ratio`` were throttles, or more than
  ``error_ratio`` were server errors (the server is down, not flaky). The pause is the
  server's ``Retry-After`` when it gave one, else 1 s doubling per consecutive pause (at most
  ``pause_cap``); the streak decays by one for every ``probation`` successes. After a
  throttle storm sending resumes at the rate the server was accepting; after an error storm
  at the same rate. Throttles while paused only lengthen the pause to the longest
  ``Retry-After`` asked, never add up.
- **The rate grows with successes, not with time:** ``up`` × the configured rate per success
  back up to the ceiling (``ceiling_margin`` × the rate at which the last helpful cut was
  made), then ``probe`` × the configured rate per success above it, growing by one more
  ``probe`` every ``accel`` successes without a cut (concave, then convex, like CUBIC around
  its W_max), never above the configured rate.
- **Throttling that does not come from our rate is tolerated.** Each cut is checked over its
  probation: when throttles went on at about the same ratio at the lower rate, the cut did not
  help, so the rate is restored and that ratio becomes the tolerance; later throttles cut only
  while the ratio over the last ``window`` answers is above ``slack`` × the tolerance. Behind
  a provider's own rate limit, a cut makes the throttles stop, so the tolerance stays 0; cuts
  in the ``3 × probation`` answers after a pause are never undone (overload was just seen).

Why not the anchors as they are: the AWS SDKs' adaptive mode (CUBIC on every throttle) and
TCP-style AIMD both cut on every 429, so a provider that answers a steady few percent of 429s
whatever the rate drives them to their floor; Envoy's adaptive throttling tolerates a fixed
throttle ratio, so behind a real limit it keeps that ratio of 429s for good. Checking whether a
cut helped tells the two cases apart with a handful of counters.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass


class Signal(enum.Enum):
    """What one answer says about the server."""

    OK = "ok"
    """Answered (accepted, or refused for a reason of its own): the server is coping."""
    ERROR = "error"
    """A 5xx without ``Retry-After`` or no answer: this request failed."""
    THROTTLE = "throttle"
    """A 429, a 503 with ``Retry-After``, or a rate-limit text: the server is overloaded."""


@dataclass(frozen=True)
class Tuning:
    """The knobs of ``AdaptiveRate`` (defaults chosen by tests/bench/profiles_bench.py).
    Raises ``ValueError`` for values outside their range."""

    beta: float = 0.7
    up: float = 0.01
    probe: float = 0.0005
    accel: float = 30.0
    window: int = 200
    probation: int = 60
    slack: float = 1.5
    ceiling_margin: float = 0.9
    overload_ratio: float = 0.5
    error_ratio: float = 0.5
    min_samples: int = 30
    pause_base: float = 1.0
    pause_cap: float = 60.0
    max_retry_after: float = 600.0

    def __post_init__(self) -> None:
        if not 0.0 < self.beta < 1.0:
            raise ValueError("beta must be between 0 and 1")
        if not (0.0 < self.error_ratio <= 1.0 and 0.0 < self.overload_ratio <= 1.0):
            raise ValueError("error_ratio and overload_ratio must be within (0, 1]")
        if min(self.window, self.probation, self.min_samples) < 1:
            raise ValueError("window, probation and min_samples must be at least 1")
        if self.accel <= 0:
            raise ValueError("accel must be above zero")
        if min(self.up, self.probe, self.slack, self.pause_base, self.pause_cap) < 0:
            raise ValueError("up, probe, slack and pauses must not be negative")


@dataclass
class _Probation:
    before: float  # the rate before the cut
    ratio: float  # the throttle ratio of the answers just before it
    answers: int = 0
    throttles: int = 0


class AdaptiveRate:
    """The current request rate of a run, moved by the answers it gets (module docstring).

    ``observe`` takes one answer; ``rate`` is the rate to send at; ``pause_until`` is the end
    of the current fleet-wide pause (``-inf`` when none ever was). Raises ``ValueError`` for
    a rate that is not above zero.
    """

    def __init__(self, configured: float, *, tuning: Tuning | None = None) -> None:
        if not configured > 0:
            raise ValueError("rate must be above zero")
        self._t = tuning or Tuning()
        self.configured = configured
        # 5% of the configured rate but at least 0.2/s, never above the configured rate.
        self.min_rate = min(configured, max(0.05 * configured, 0.2))
        self.rate = configured
        self.lowest = configured
        """The lowest rate reached so far."""
        self.ceiling = configured
        self.tolerance = 0.0
        """The throttle ratio learnt to come from the provider whatever our rate."""
        self.pause_until = -math.inf
        self._recent: deque[tuple[float, Signal]] = deque(maxlen=self._t.window)
        self._lately: deque[tuple[float, Signal]] = deque()  # errors and throttles, last 60 s
        self._probation: _Probation | None = None
        self._streak = 0
        self._calm = 0
        self._above = 0  # successes since the rate went past the ceiling
        self._since_pause = 1 << 30
        self.errors = 0
        self.throttles = 0
        self.cuts = 0
        """Rate cuts (pauses included)."""
        self.pauses = 0
        """Fleet-wide pauses started."""
        self.undone = 0
        """Cuts undone because the throttling went on regardless."""
        self.paused_s = 0.0
        """Seconds of fleet-wide pause so far (a pause counts in full when it starts)."""

    # -- answers -------------------------------------------------------------------------

    def observe(self, now: float, signal: Signal, retry_after: float | None = None) -> bool:
        """Take one answer seen at ``now``; return True when it started or lengthened a
        fleet-wide pause (``pause_until`` says until when)."""
        self._recent.append((now, signal))
        self._since_pause += 1
        if signal is not Signal.OK:
            self._lately.append((now, signal))
            self._trim(now)
        self._check_probation(signal)
        if signal is Signal.OK:
            self._grow()
            return False
        last = list(self._recent)[-self._t.probation :]
        enough = len(last) >= self._t.min_samples
        if signal is Signal.ERROR:
            self.errors += 1
            errors = sum(1 for _, s in last if s is Signal.ERROR)
            if enough and errors > self._t.error_ratio * len(last):
                # The server is down, not flaky: wait, but our rate was not the cause.
                return self._pause(now, None, last, cut=False)
            return False
        self.throttles += 1
        ratio = sum(1 for _, s in last if s is Signal.THROTTLE) / len(last)
        if now < self.pause_until or (enough and ratio > self._t.overload_ratio):
            return self._pause(now, retry_after, last, cut=True)
        if self._probation is not None:
            return False  # the current episode
        window = sum(1 for _, s in self._recent if s is Signal.THROTTLE) / len(self._recent)
        if window <= self.tolerance * self._t.slack:
            return False  # background throttling, learnt not to come from our rate
        before = self.rate
        self._set(before * self._t.beta)
        self.ceiling = self.rate
        self._above = 0
        self.cuts += 1
        self._probation = _Probation(before, ratio)
        return False

    def per_minute(self, now: float) -> tuple[int, int]:
        """Return (errors, throttles) seen in the 60 s before ``now``."""
        self._trim(now)
        throttles = sum(1 for _, s in self._lately if s is Signal.THROTTLE)
        return len(self._lately) - throttles, throttles

    # -- internals -----------------------------------------------------------------------

    def _set(self, rate: float) -> None:
        self.rate = max(self.min_rate, min(self.configured, rate))
        self.lowest = min(self.lowest, self.rate)

    def _grow(self) -> None:
        if self.rate < self.ceiling:
            step = self._t.up
            self._above = 0
        else:
            # Probing past the ceiling: slow at first, faster the longer no throttle comes
            # (the limit was not where the last cut put it), as CUBIC does past its W_max.
            self._above += 1
            step = self._t.probe * (1.0 + self._above / self._t.accel)
        self._set(self.rate + step * self.configured)
        self._calm += 1
        if self._calm >= self._t.probation:
            self._calm = 0
            self._streak = max(0, self._streak - 1)

    def _check_probation(self, signal: Signal) -> None:
        p = self._probation
        if p is None or signal is Signal.ERROR:  # errors say nothing about our rate
            return
        p.answers += 1
        p.throttles += signal is Signal.THROTTLE
        if p.answers < self._t.probation:
            return
        self._probation = None
        after = p.throttles / p.answers
        same = 0.5 * p.ratio <= after <= 2.0 * p.ratio + 0.02
        trusted = self._since_pause < 3 * self._t.probation  # real overload was just seen
        if p.throttles >= 2 and same and after <= 1.0 - self._t.beta and not trusted:
            # The cut did not help: these throttles do not come from our rate.
            self.tolerance = after
            self.undone += 1
            self._set(max(self.rate, p.before))
            self.ceiling = max(self.ceiling, p.before)
        else:
            self.ceiling = self._t.ceiling_margin * p.before

    def _pause(
        self, now: float, retry_after: float | None, last: list[tuple[float, Signal]], *, cut: bool
    ) -> bool:
        if now < self.pause_until:  # an echo of the current pause: never adds up
            if retry_after is None:
                return False
            return self._extend(now, now + min(max(retry_after, 0.0), self._t.max_retry_after))
        self._streak += 1
        self._calm = 0
        self._since_pause = 0
        self.pauses += 1
        if cut:
            self.cuts += 1
            span = now - last[0][0]
            oks = sum(1 for _, s in last if s is Signal.OK)
            accepted = oks / span if span > 0 and oks > 1 else self.rate * self._t.beta
            # Restart at what the server was accepting, and climb back carefully.
            self._set(min(self.rate * self._t.beta, accepted))
            self.ceiling = self.rate
            self._above = 0
        self._probation = None
        self._recent.clear()  # acted on: the next pause needs fresh evidence
        if retry_after is not None:
            pause = min(max(retry_after, 0.0), self._t.max_retry_after)
        else:
            pause = min(self._t.pause_cap, self._t.pause_base * 2.0 ** min(self._streak - 1, 32))
        return self._extend(now, now + pause)

    def _extend(self, now: float, end: float) -> bool:
        if end <= self.pause_until:
            return False
        self.paused_s += end - max(now, self.pause_until)
        self.pause_until = end
        return True

    def _trim(self, now: float) -> None:
        while self._lately and self._lately[0][0] <= now - 60.0:
            self._lately.popleft()
