"""The state a run keeps while the scheduler runs it: each VPS's state and reason, the
failure budgets, the sends in flight, drain and cancel, and the events reported to the sink.

Budgets: a failure (``failed`` or ``in_doubt``) that goes one past the wave's or the run's
budget trips it. Nothing new is sent after that; reinstalls already in flight finish and are
recorded; the VPSes never sent end ``skipped`` and the run ends aborted, naming the budget.

Drain (first SIGINT/SIGTERM, ``drain()``): nothing new is sent, in-flight sends finish and are
recorded; readiness waits stop (those VPSes stay ``accepted``: resume checks them again without
resending). A second signal cancels the run's task group (``cancel()``): VPSes whose send was
in flight end ``in_doubt``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence

import anyio

from orchestrator.fleet import InDoubtPolicy
from orchestrator.model import Clock, EventSink, ReinstallAPI, TargetEvent, TargetState
from orchestrator.run.jobs import Job, RunResult, RunSettings
from orchestrator.run.limits import Limits
from orchestrator.run.phase import RunPhase
from orchestrator.run.proof import Prover
from orchestrator.run.reconcile import Resolution
from orchestrator.run.retry import RetryBudget


class RunState:
    """A run's bookkeeping (the base of ``Scheduler``): states, budgets, drain, events."""

    def __init__(
        self,
        api: ReinstallAPI,
        sink: EventSink,
        *,
        clock: Clock,
        limits: Limits,
        settings: RunSettings,
        budget: RetryBudget | None = None,
        rng: random.Random | None = None,
        prior_failures: Mapping[int, int] | None = None,
        wave_ready: Mapping[int, float] | None = None,
        on_wave_ready: Callable[[int, float], Awaitable[None]] | None = None,
    ) -> None:
        """``prior_failures`` maps wave to the failures an earlier part of this run already
        counted (resume): they count against the wave's and the run's budgets.
        ``wave_ready`` maps wave to the wall-clock time it became ready as recorded (resume:
        the soak after it is served in full, counted from then); ``on_wave_ready`` is awaited
        with each wave that becomes ready now, to record it durably before the soak."""
        self._api = api
        self._sink = sink
        self._clock = clock
        self._limits = limits
        self._settings = settings
        self._budget = budget or RetryBudget()
        self._rng = rng or random.Random()
        self._result = RunResult()
        self._prior = dict(prior_failures or {})
        self._wave_failures = 0
        self._run_failures = sum(self._prior.values())
        self._draining = False
        self._wait_scopes: set[anyio.CancelScope] = set()
        self._everything: anyio.CancelScope | None = None
        self._in_flight: dict[str, int] = {}  # kvm id -> wave, while its POST is out
        self._resending: set[str] = set()  # in-flight POSTs that are the one resend
        self._doubts: dict[str, str] = {}
        # Readiness mode ssh: the proof's stages and what they saw; each VPS's address; how
        # in-doubt sends were resolved (rollout.in_doubt: reconcile).
        self.prover = Prover(clock)
        self.reconciled: dict[Resolution, int] = dict.fromkeys(Resolution, 0)
        self._addresses: dict[str, str | None] = {}
        self._wave_ready = dict(wave_ready or {})
        self._on_wave_ready = on_wave_ready
        # What the run is doing now, for a live view (read-only outside the scheduler).
        self.phase = RunPhase(run_budget=settings.run_budget, run_failures=self._run_failures)

    @property
    def result(self) -> RunResult:
        """The run's result so far."""
        return self._result

    def drain(self) -> None:
        """Stop sending: in-flight sends finish, readiness waits end, the rest is skipped."""
        self._draining = True
        self._result.interrupted = True
        for scope in self._wait_scopes:
            scope.cancel()

    def cancel(self) -> None:
        """Stop at once: in-flight sends are cancelled and recorded as in doubt."""
        self.drain()
        if self._everything is not None:
            self._everything.cancel()

    @property
    def stopping(self) -> bool:
        """True once nothing new may be sent (drain or a tripped budget)."""
        return self._draining or self._result.aborted is not None

    def _doubt_in_flight(self, reason: str) -> None:
        """Record every POST still in flight as in doubt; under ``resend-after-window`` the
        resend stays decided (resume serves the window), unless it was the resend itself."""
        resend = self._settings.in_doubt is InDoubtPolicy.RESEND_AFTER_WINDOW
        for kvm_id, wave_index in list(self._in_flight.items()):
            spent = kvm_id in self._resending
            self._set(kvm_id, wave_index, TargetState.IN_DOUBT, reason, resend=resend and not spent)
        self._in_flight.clear()

    # -- bookkeeping -----------------------------------------------------------------

    def _fail(
        self, job: Job, state: TargetState, reason: str, wave_budget: int, *, resend: bool = False
    ) -> None:
        self._set(job.kvm_id, job.wave, state, reason, resend=resend)
        self._wave_failures += 1
        self._run_failures += 1
        self.phase.wave_failures, self.phase.run_failures = self._wave_failures, self._run_failures
        if self._result.aborted is not None:
            return
        if self._wave_failures > wave_budget:
            self._result.aborted = (
                f"wave {job.wave} failure budget ({wave_budget}) exceeded: "
                f"{self._wave_failures} failed"
            )
        elif self._run_failures > self._settings.run_budget:
            self._result.aborted = (
                f"run failure budget ({self._settings.run_budget}) exceeded: "
                f"{self._run_failures} failed"
            )

    def _set(
        self,
        kvm_id: str,
        wave: int,
        state: TargetState,
        reason: str = "",
        *,
        resend: bool = False,
        presend: str | None = None,
    ) -> None:
        self._result.states[kvm_id] = state
        if reason:
            self._result.reasons[kvm_id] = reason
        proof, known = ("", "")
        if state in (TargetState.READY, TargetState.FAILED):
            proof, known = self.prover.facts(kvm_id)  # the proven key: journal facts
        event = TargetEvent(
            kvm_id, state, wave, self._clock.time(), reason, resend=resend,
            presend_key=presend, proof=proof, known_hosts=known,
        )  # fmt: skip
        self._sink.emit(event)

    def _skip_all(self, jobs: Sequence[Job], reason: str) -> None:
        for job in jobs:
            if self._result.states.get(job.kvm_id) in (None, TargetState.PENDING):
                self._set(job.kvm_id, job.wave, TargetState.SKIPPED, reason)

    @contextlib.contextmanager
    def _until_drained(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope that ``drain()`` cancels: for waits, never for sends."""
        scope = anyio.CancelScope()
        if self._draining:
            scope.cancel()
        self._wait_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._wait_scopes.discard(scope)

    def _stop_reason(self) -> str:
        if self._result.aborted is not None:
            return f"not sent: {self._result.aborted}"
        return "not sent: the run was interrupted"
