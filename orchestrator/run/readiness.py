""" "Is it back?" — waiting for a reinstalled VPS to come up again.

An accepted ``set/reinstall`` only means *accepted*: there is no job id and no completion
event, so completion is observed from outside (API-NOTES, "Reinstall"). Three modes:

- ``api``: poll ``get/power`` until it reports the VPS powered on. Not before a minimum install
  time has passed since acceptance: right after acceptance the VPS still reports "powered on"
  because the install has not started yet.
- ``tcp``: the VPS's IP and port (22 by default) must first stop answering (the install took
  it down) or the minimum install time pass (the down phase may fall between two probes), and
  then accept connections again.
- ``none``: ready at once; nothing is checked.

Every mode ends at a per-VPS deadline counted from acceptance (by default 20 min for Linux
images, 40 min for Windows: ``fleet.default_ready_deadline``). Nothing here does I/O of its own
except the default TCP probe: time comes from a ``Clock`` and the power query is an injected
callable, so the scheduler can wrap it in its session book and rate limiter, and tests can
script it. The deadline is checked between probes, so a run can overshoot it by one probe's
own timeout.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from orchestrator.errors import ApiError, AuthenticationError, SessionUnavailableError
from orchestrator.fleet import (
    DEFAULT_MIN_INSTALL_S,
    DEFAULT_POLL_INTERVAL_S,
    DEFAULT_READY_PORT,
    LINUX_READY_DEADLINE_S,
    ReadinessMode,
)
from orchestrator.model import Clock

# Each wait between probes is the interval times 1 ± this, so thousands of VPSes accepted
# together do not poll in lockstep.
DEFAULT_JITTER = 0.1
DEFAULT_CONNECT_TIMEOUT = 3.0

PowerQuery = Callable[[], Awaitable[str]]
"""Returns the VPS's power state text (``get/power``); raises ``ApiError`` subclasses."""
TcpProbe = Callable[[str, int], Awaitable[bool]]
"""Returns whether ``host:port`` accepted a TCP connection; must not raise for network errors."""

_ON_WORDS = ("powered on", "running")
_OFF_WORDS = ("powered off", "stopped", "shut off", "shutdown")


@dataclass(frozen=True)
class ReadyResult:
    """How waiting for one VPS ended.

    ``ready``: the VPS is back. ``reason``: one sentence for reports (``"powered on"``,
    ``"port 22 answered"``, ``"deadline of 1200 s passed; ..."``). ``seconds``: from acceptance
    to the end of the wait. ``polls``: power queries or connection attempts made. ``errors``:
    how many of the power queries failed (``ApiError``).
    """

    ready: bool
    reason: str
    seconds: float
    polls: int
    errors: int = 0


def is_powered_on(state: str) -> bool:
    """Return whether a ``get/power`` text means the VPS runs (``powered on`` / ``running``)."""
    text = state.casefold()
    return any(word in text for word in _ON_WORDS)


def primary_ipv4(details: Mapping[str, Any]) -> str | None:
    """Return the first IPv4 address of a ``get/details`` answer (``ip.ipv4[0]`` without its
    ``/netmask``), or ``None`` when there is none. Never raises for odd shapes."""
    ip = details.get("ip")
    addresses = ip.get("ipv4") if isinstance(ip, Mapping) else None
    if isinstance(addresses, str):
        addresses = [addresses]
    if not isinstance(addresses, list) or not addresses or not isinstance(addresses[0], str):
        return None
    address = addresses[0].split("/", 1)[0].strip()
    return address or None


async def tcp_connect(
    host: str, port: int, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> bool:
    """Return whether ``host:port`` accepts a TCP connection within ``connect_timeout`` s.

    The connection is closed at once. Returns ``False`` (never raises) when the connection is
    refused, times out, or the host is unreachable or does not resolve.
    """
    with anyio.move_on_after(connect_timeout):
        try:
            stream = await anyio.connect_tcp(host, port)
        except OSError:  # refused, unreachable, reset, DNS failure (gaierror)
            return False
        await stream.aclose()
        return True
    return False


async def wait_ready(
    mode: ReadinessMode,
    *,
    clock: Clock,
    deadline_seconds: float = LINUX_READY_DEADLINE_S,
    min_install_seconds: float = DEFAULT_MIN_INSTALL_S,
    poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    accepted_at: float | None = None,
    power: PowerQuery | None = None,
    host: str | None = None,
    port: int = DEFAULT_READY_PORT,
    connect: TcpProbe = tcp_connect,
    jitter: float = DEFAULT_JITTER,
    rng: random.Random | None = None,
) -> ReadyResult:
    """Wait until the VPS whose reinstall was accepted at ``accepted_at`` is back.

    ``accepted_at`` is a ``clock.monotonic()`` reading (default: now); the deadline and the
    minimum install time count from it. ``power`` is required for ``api``, ``host`` for
    ``tcp``; ``connect`` replaces the TCP probe (tests). ``rng`` draws the jitter (default
    ``random.Random(0)``; pass one per VPS, e.g. seeded with its kvm_id, to spread polls).

    In ``api`` mode a failed power query is counted and polling goes on, except an
    ``AuthenticationError`` or ``SessionUnavailableError``, which end the wait (not ready):
    no later poll could succeed. Never raises for a VPS that does not come back; raises
    ``ValueError`` for an unknown mode, a missing ``power``/``host``, or bad numbers (negative,
    a zero interval, a minimum install time beyond the deadline). Other exceptions of
    ``power`` propagate.
    """
    mode = _parse_mode(mode)
    _check_args(
        deadline=deadline_seconds,
        minimum=min_install_seconds,
        interval=poll_interval,
        jitter=jitter,
        port=port,
    )
    start = clock.monotonic() if accepted_at is None else accepted_at
    waiter = _Waiter(
        clock=clock,
        start=start,
        deadline=start + deadline_seconds,
        earliest=start + min_install_seconds,
        interval=poll_interval,
        jitter=jitter,
        rng=rng if rng is not None else random.Random(0),
    )
    if mode is ReadinessMode.NONE:
        return ReadyResult(True, "readiness not checked", waiter.elapsed(), 0)
    if mode is ReadinessMode.SSH:
        raise ValueError("readiness mode 'ssh' is waited for by orchestrator.run.proof")
    if mode is ReadinessMode.API:
        if power is None:
            raise ValueError("readiness mode 'api' needs a power query")
        return await _wait_api(waiter, power, deadline_seconds)
    if not host:
        raise ValueError("readiness mode 'tcp' needs the VPS's host")
    return await _wait_tcp(waiter, connect, host, port, deadline_seconds)


def _parse_mode(mode: ReadinessMode | str) -> ReadinessMode:
    """Return ``mode`` as a ``ReadinessMode``; raise ``ValueError`` for anything else."""
    try:
        return ReadinessMode(mode)
    except ValueError:
        names = ", ".join(repr(m.value) for m in ReadinessMode)
        raise ValueError(f"readiness mode must be one of {names}, not {mode!r}") from None


def _check_args(
    *, deadline: float, minimum: float, interval: float, jitter: float, port: int
) -> None:
    if not deadline >= 0:
        raise ValueError("deadline_seconds must be >= 0")
    if not 0 <= minimum <= deadline:
        raise ValueError("min_install_seconds must be between 0 and deadline_seconds")
    if not interval > 0:
        raise ValueError("poll_interval must be > 0")
    if not 0 <= jitter < 1:
        raise ValueError("jitter must be in [0, 1)")
    if not 0 < port <= 65535:
        raise ValueError("port must be in 1..65535")


@dataclass
class _Waiter:
    """The time arithmetic shared by the modes."""

    clock: Clock
    start: float
    deadline: float
    earliest: float
    interval: float
    jitter: float
    rng: random.Random

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.start

    def past_deadline(self) -> bool:
        return self.clock.monotonic() >= self.deadline

    def past_minimum(self) -> bool:
        return self.clock.monotonic() >= self.earliest

    async def sleep_until(self, when: float) -> None:
        """Sleep until ``when`` (at most until the deadline)."""
        delay = min(when, self.deadline) - self.clock.monotonic()
        if delay > 0:
            await self.clock.sleep(delay)

    async def pause(self) -> None:
        """Sleep one jittered interval, cut short at the deadline so that the last probe
        happens right at it."""
        spread = self.interval * self.jitter
        delay = self.interval + self.rng.uniform(-spread, spread)
        await self.sleep_until(self.clock.monotonic() + delay)


async def _wait_api(waiter: _Waiter, power: PowerQuery, deadline_seconds: float) -> ReadyResult:
    polls = errors = 0
    last_state: str | None = None
    last_error: ApiError | None = None
    # Before the minimum install time a "powered on" proves nothing: do not spend API calls.
    await waiter.sleep_until(waiter.earliest)
    while True:
        polls += 1
        try:
            last_state = await power()
        except (AuthenticationError, SessionUnavailableError) as exc:
            # Final: every later poll would fail the same way.
            return ReadyResult(False, f"gave up: {exc}", waiter.elapsed(), polls, errors + 1)
        except ApiError as exc:
            errors += 1
            last_error = exc
        else:
            if is_powered_on(last_state) and waiter.past_minimum():
                return ReadyResult(True, "powered on", waiter.elapsed(), polls, errors)
        if waiter.past_deadline():
            break
        await waiter.pause()
    reason = _api_timeout_reason(deadline_seconds, last_state, errors, last_error)
    return ReadyResult(False, reason, waiter.elapsed(), polls, errors)


def _api_timeout_reason(
    deadline_seconds: float, state: str | None, errors: int, last_error: ApiError | None
) -> str:
    failed = f"; {errors} power queries failed, the last with: {last_error}" if errors else ""
    if state is None:
        return f"deadline of {deadline_seconds:g} s passed; no power state was read{failed}"
    if any(word in state.casefold() for word in _OFF_WORDS):
        return (
            f"install failed: power reports {state!r} after the install window "
            f"(deadline of {deadline_seconds:g} s){failed}"
        )
    return f"deadline of {deadline_seconds:g} s passed; last power state: {state!r}{failed}"


async def _wait_tcp(
    waiter: _Waiter, connect: TcpProbe, host: str, port: int, deadline_seconds: float
) -> ReadyResult:
    polls = 0
    went_down_at: float | None = None
    # Phase 1: the port must go down (the install started) or the minimum time pass. Since
    # the minimum is within the deadline, this loop ends by the deadline at the latest.
    while not waiter.past_minimum():
        polls += 1
        if not await connect(host, port):
            went_down_at = waiter.elapsed()
            await waiter.pause()
            break
        await waiter.pause()
    # Phase 2: it must answer again.
    while True:
        polls += 1
        if await connect(host, port):
            seen = "never seen down" if went_down_at is None else f"down after {went_down_at:.0f} s"
            return ReadyResult(True, f"port {port} answered ({seen})", waiter.elapsed(), polls)
        if waiter.past_deadline():
            break
        await waiter.pause()
    where = f"{host}:{port}"
    if went_down_at is None:
        detail = f"{where} never answered after the minimum install time"
    else:
        detail = f"{where} went down after {went_down_at:.0f} s and never answered again"
    return ReadyResult(
        False, f"deadline of {deadline_seconds:g} s passed; {detail}", waiter.elapsed(), polls
    )
