"""Run a plan: waves of per-VPS flows under a concurrency cap, failure budgets and drain.

Per VPS: ``pending`` → (concurrency slot, rate token, durable intent) reinstall POST with
retries → ``accepted`` → readiness wait → ``ready``; or ``failed`` / ``in_doubt`` /
``skipped``. The concurrency cap holds only the sending phase: a VPS that waits minutes for
its install does not keep another from being sent.

Retry safety lives in ``retry.decide``: not-sent and throttled attempts are retried, a refused
signature was already refreshed and replayed once by the session book, rejected is final, and
an in-doubt reinstall is never resent blindly: under the ``report`` policy it ends in doubt,
under ``resend-after-window`` it is resent once, after the image's install window has passed
(so a running install is never interrupted), with a new durable intent. "Once" is a journal
fact: the ``in_doubt`` event carries ``resend=True`` (the journal records the decision) and the
resend's intent is marked (``resent_at``; the journal refuses a second), so a resumed run
serves the rest of the window counted from the recorded send and never resends twice. The
policy trades a possible double wipe (the in-doubt reinstall may have run) for progress.

Soaks: before each wave, the soak after the latest earlier wave that became ready is served,
counted from the time it became ready (``wave_ready``, recorded through ``on_wave_ready``),
so a resumed run serves an interrupted soak in full. An error that tears the run down
records the sends in flight in doubt, as a second signal does, then propagates.

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
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import anyio
from anyio.abc import TaskGroup

from orchestrator.errors import ApiError, InDoubtError
from orchestrator.fleet import InDoubtPolicy, ReadinessMode
from orchestrator.model import (
    Clock,
    EventSink,
    Outcome,
    ReinstallAPI,
    TargetEvent,
    TargetState,
)
from orchestrator.run.limits import Limits
from orchestrator.run.phase import RunPhase
from orchestrator.run.proof import ProofSpec, Prover
from orchestrator.run.readiness import ReadyResult, wait_ready
from orchestrator.run.reconcile import Resolution, reconcile
from orchestrator.run.retry import RetryBudget, RetryPolicy, call_with_retries
from orchestrator.secrets import Secret

T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    """One VPS to reinstall, with everything its flow needs (secrets stay ``Secret``)."""

    kvm_id: str
    wave: int
    image: str
    password: Secret
    user_data: Secret | None
    readiness: ReadinessMode
    port: int
    deadline_s: float
    min_install_s: float
    install_window_s: float
    poll_interval_s: float = 15.0
    vps_deadline_s: float | None = None
    # Resume: the reinstall was accepted before the crash (only readiness is left), or an
    # intent was written and no outcome (in doubt since that wall-clock time).
    accepted_already: bool = False
    in_doubt_since: float | None = None
    # Readiness mode ssh: what proves this VPS's reinstall (run/proof.py).
    proof: ProofSpec | None = None
    # Resume: when the reinstall was accepted (wall clock; readiness deadlines count from
    # it), and whether this run already sent its one in-doubt resend (never a second).
    accepted_at: float | None = None
    resend_spent: bool = False
    # Resume, readiness mode ssh: the host key the journal recorded just before the send
    # (``""``: nothing answered; None: none recorded), so reconciliation decides as live.
    presend_key: str | None = None


@dataclass(frozen=True)
class WaveSpec:
    """One wave's jobs and its failure budget."""

    index: int
    jobs: tuple[Job, ...]
    budget: int


@dataclass(frozen=True)
class RunSettings:
    """How the run behaves beyond the per-VPS facts."""

    run_budget: int
    soak_s: float = 0.0
    in_doubt: InDoubtPolicy = InDoubtPolicy.REPORT
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass
class RunResult:
    """How a run ended: the final state of every VPS, and why the run stopped early if it did."""

    states: dict[str, TargetState] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    aborted: str | None = None
    interrupted: bool = False

    def count(self, state: TargetState) -> int:
        """How many VPSes ended in ``state``."""
        return sum(1 for s in self.states.values() if s is state)


class Scheduler:
    """Runs waves of jobs against a ``ReinstallAPI``, reporting every change to a sink."""

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

    async def run(self, waves: Sequence[WaveSpec]) -> RunResult:
        """Run the waves in order and return the result. Never raises for per-VPS failures."""
        try:
            with anyio.CancelScope() as everything:
                self._everything = everything
                for wave in waves:
                    if not self.stopping:
                        await self._soak_before(wave.index)
                    if self.stopping:
                        self._skip_all(wave.jobs, self._stop_reason())
                        continue
                    self._wave_failures = self._prior.get(wave.index, 0)
                    self.phase.wave, self.phase.wave_size = wave.index, len(wave.jobs)
                    self.phase.wave_budget = wave.budget
                    self.phase.wave_failures = self._wave_failures
                    await self._run_wave(wave)
                    if not self.stopping and wave.index not in self._wave_ready:
                        self._wave_ready[wave.index] = at = self._clock.time()
                        if self._on_wave_ready is not None:
                            await self._on_wave_ready(wave.index, at)
        except BaseException:
            # An error (or a cancellation from outside) tore the run down: the POSTs it cut
            # off are in doubt, exactly as for a second signal.
            self._doubt_in_flight("the run stopped on an error while the send was in flight")
            raise
        if everything.cancelled_caught:
            self._doubt_in_flight("interrupted while the send was in flight")
            for wave in waves:
                self._skip_all(wave.jobs, "interrupted before it was sent")
        return self._result

    async def _soak_before(self, wave_index: int) -> None:
        """Serve the soak after the latest earlier wave that became ready, counted from when
        it did (as recorded: a resumed run serves an interrupted soak in full)."""
        soak = self._settings.soak_s
        before = [at for index, at in self._wave_ready.items() if index < wave_index]
        if soak <= 0 or not before:
            return
        left = soak - (self._clock.time() - max(before))
        if left > 0:
            self.phase.soak_until, self.phase.soak_before = self._clock.time() + left, wave_index
            try:
                with self._until_drained():
                    await self._clock.sleep(left)
            finally:
                self.phase.soak_until = None

    def _doubt_in_flight(self, reason: str) -> None:
        """Record every POST still in flight as in doubt; under ``resend-after-window`` the
        resend stays decided (resume serves the window), unless it was the resend itself."""
        resend = self._settings.in_doubt is InDoubtPolicy.RESEND_AFTER_WINDOW
        for kvm_id, wave_index in list(self._in_flight.items()):
            spent = kvm_id in self._resending
            self._set(kvm_id, wave_index, TargetState.IN_DOUBT, reason, resend=resend and not spent)
        self._in_flight.clear()

    # -- one VPS ---------------------------------------------------------------------

    async def _run_wave(self, wave: WaveSpec) -> None:
        """Send the wave's reinstalls from a pool of ``concurrency`` workers.

        A pool, not a task per VPS: 20,000 parked tasks cost ~200 MB and make every garbage
        collection walk them. Readiness waits and resends after the install window run as
        follow-up tasks, so a long wait never holds a sending slot.
        """
        jobs = iter(wave.jobs)
        workers = min(int(self._limits.concurrency.total_tokens), len(wave.jobs))
        # Senders finish first (inner group), follow-ups may outlive them (outer group).
        async with anyio.create_task_group() as followups, anyio.create_task_group() as senders:
            for _ in range(workers):
                senders.start_soon(self._sender, jobs, followups, wave.budget)

    async def _sender(self, jobs: Iterator[Job], followups: TaskGroup, wave_budget: int) -> None:
        # Workers share one iterator: each next() hands a job to exactly one of them.
        for job in jobs:
            started = self._clock.monotonic()
            if job.accepted_already:
                # Already recorded as accepted: no event, only the readiness check is left.
                self._result.states[job.kvm_id] = TargetState.ACCEPTED
                followups.start_soon(self._await_ready, job, started, wave_budget)
                continue
            if self.stopping:
                self._set(job.kvm_id, job.wave, TargetState.SKIPPED, self._stop_reason())
                continue
            if job.presend_key is not None:
                self.prover.recall(job.kvm_id, job.presend_key)
            if job.proof is not None and job.in_doubt_since is None:
                # The scan comes first: its key rides on the ``pending`` event, so the journal
                # commits it with (or before) the intent.
                self._set(job.kvm_id, job.wave, TargetState.PENDING, presend=await self._scan(job))
            else:
                self._set(job.kvm_id, job.wave, TargetState.PENDING)
            step = await self._first_send(job, wave_budget)
            if step == "accepted":
                followups.start_soon(self._await_ready, job, started, wave_budget)
            elif step == "resend":
                followups.start_soon(self._resend_later, job, started, wave_budget)
            elif step == "reconcile":
                followups.start_soon(self._reconcile, job, started, wave_budget)

    async def _first_send(
        self, job: Job, wave_budget: int
    ) -> Literal["accepted", "resend", "reconcile", "over"]:
        """Send the reinstall once (with retries of what was not processed)."""
        try:
            if job.in_doubt_since is not None:
                raise InDoubtError(
                    "an intent was recorded but no outcome (the run stopped while sending)",
                    endpoint="set/reinstall",
                    kvm_id=job.kvm_id,
                )
            await self._send(job)
        except InDoubtError as exc:
            if self._reconciles(job):
                self._doubts[job.kvm_id] = exc.message
                return "reconcile"
            resend = self._settings.in_doubt is InDoubtPolicy.RESEND_AFTER_WINDOW
            if job.resend_spent:
                why = f"{exc.message}; its one resend was already sent, never a second"
                self._fail(job, TargetState.IN_DOUBT, why, wave_budget)
                return "over"
            if not resend or self.stopping:
                # Stopping: the resend stays decided (journal), resume serves the window.
                self._fail(job, TargetState.IN_DOUBT, exc.message, wave_budget, resend=resend)
                return "over"
            self._set(
                job.kvm_id,
                job.wave,
                TargetState.IN_DOUBT,
                "waiting out the install window",
                resend=True,
            )
            self._doubts[job.kvm_id] = exc.message
            return "resend"
        except ApiError as exc:
            self._fail(job, TargetState.FAILED, exc.message, wave_budget)
            return "over"
        except _Skipped as why:
            self._set(job.kvm_id, job.wave, TargetState.SKIPPED, str(why))
            return "over"
        self._set(job.kvm_id, job.wave, TargetState.ACCEPTED)
        return "accepted"

    def _reconciles(self, job: Job) -> bool:
        """Whether an in-doubt send of ``job`` is resolved by looking (``reconcile``)."""
        reconcile = self._settings.in_doubt is InDoubtPolicy.RECONCILE
        return reconcile and job.proof is not None and not self.stopping

    async def _reconcile(self, job: Job, started: float, wave_budget: int) -> None:
        """Resolve an in-doubt send by the host key the VPS presents (``run/reconcile.py``):
        accepted (then cloud-init decides), resent once, or left in doubt."""
        why = self._doubts.pop(job.kvm_id, "in doubt")
        proof = job.proof
        if proof is None:  # pragma: no cover - _reconciles checked it
            return
        look = "looking at its host key for the install window"
        self._set(job.kvm_id, job.wave, TargetState.IN_DOUBT, f"{why}; {look}")
        host = await self._address(job)
        window = job.install_window_s
        if job.in_doubt_since is not None:
            window -= self._clock.time() - job.in_doubt_since
        with self._until_drained() as scope:
            verdict = await reconcile(
                self.prover, job.kvm_id, proof, host, job.port,
                window_s=window, may_resend=not job.resend_spent,
            )  # fmt: skip
        if scope.cancelled_caught:
            self._fail(job, TargetState.IN_DOUBT, f"{why}; interrupted while looking", wave_budget)
            return
        self.reconciled[verdict.resolution] += 1
        if verdict.resolution is Resolution.UNRESOLVED or host is None:
            self._fail(job, TargetState.IN_DOUBT, verdict.reason, wave_budget)
            return
        if verdict.resolution is Resolution.RESEND:
            self._set(job.kvm_id, job.wave, TargetState.IN_DOUBT, verdict.reason, resend=True)
            try:
                await self._send(job, resend=True)
            except InDoubtError as again:
                self._fail(job, TargetState.IN_DOUBT, again.message, wave_budget)
                return
            except ApiError as again:
                self._fail(job, TargetState.FAILED, again.message, wave_budget)
                return
            self._set(job.kvm_id, job.wave, TargetState.ACCEPTED, verdict.reason)
            await self._await_ready(job, started, wave_budget)
            return
        self._set(job.kvm_id, job.wave, TargetState.ACCEPTED, verdict.reason)
        with self._until_drained() as scope:
            result = await self.prover.finish(job.kvm_id, proof, host, job.port, started)
        if scope.cancelled_caught:
            return  # drained: stays accepted, resume checks it again
        reason = f"{verdict.reason}; {result.reason}"
        if result.ready:
            self._set(job.kvm_id, job.wave, TargetState.READY, reason)
        else:
            self._fail(job, TargetState.FAILED, f"not ready: {reason}", wave_budget)

    async def _resend_later(self, job: Job, started: float, wave_budget: int) -> None:
        """Resend an in-doubt reinstall once its install window has passed, then wait."""
        why = self._doubts.pop(job.kvm_id, "in doubt")
        window = job.install_window_s
        if job.in_doubt_since is not None:
            window -= self._clock.time() - job.in_doubt_since
        with self._until_drained() as scope:
            await self._clock.sleep(max(0.0, window))
        if scope.cancelled_caught:
            # Drained during the window: the resend stays decided, resume serves the rest.
            self._fail(job, TargetState.IN_DOUBT, why, wave_budget, resend=True)
            return
        try:
            await self._send(job, resend=True)
        except InDoubtError as again:
            self._fail(job, TargetState.IN_DOUBT, again.message, wave_budget)
            return
        except ApiError as again:
            self._fail(job, TargetState.FAILED, again.message, wave_budget)
            return
        self._set(job.kvm_id, job.wave, TargetState.ACCEPTED)
        await self._await_ready(job, started, wave_budget)

    async def _await_ready(self, job: Job, started: float, wave_budget: int) -> None:
        deadline = job.deadline_s
        if job.vps_deadline_s is not None:
            # The per-VPS cap covers the whole flow: what sending took is not left for waiting.
            deadline = min(deadline, job.vps_deadline_s - (self._clock.monotonic() - started))
        with self._until_drained() as scope:
            result = await self._readiness(job, max(0.0, deadline), started)
        if scope.cancelled_caught:
            return  # drained: stays accepted, resume checks it again
        if result.ready:
            self._set(job.kvm_id, job.wave, TargetState.READY, result.reason)
        else:
            self._fail(job, TargetState.FAILED, f"not ready: {result.reason}", wave_budget)

    async def _send(self, job: Job, *, resend: bool = False) -> None:
        async with self._limits.concurrency:
            if self.stopping and not resend:
                raise _Skipped(self._stop_reason())

            async def attempt() -> None:
                await self._limits.requests.acquire("call")
                if self.stopping and not resend:
                    # Stopped while waiting for a rate token (or between retries of a
                    # request that never left): nothing new is sent.
                    raise _Skipped(self._stop_reason())
                await self._sink.before_send(job.kvm_id, job.wave)
                self._set(job.kvm_id, job.wave, TargetState.INTENT)
                self._in_flight[job.kvm_id] = job.wave
                if resend:
                    self._resending.add(job.kvm_id)
                try:
                    await self._api.reinstall(
                        job.kvm_id, image=job.image, password=job.password, user_data=job.user_data
                    )
                except ApiError as exc:
                    self._limits.requests.report(exc)
                    self._in_flight.pop(job.kvm_id, None)
                    if exc.outcome in (Outcome.NOT_SENT, Outcome.THROTTLED):
                        # Not processed: back to pending until the retry's new intent.
                        self._set(job.kvm_id, job.wave, TargetState.PENDING, "not sent")
                    raise
                # Not in a finally: a send cancelled mid-flight must stay in _in_flight so
                # the run records it in doubt.
                self._in_flight.pop(job.kvm_id, None)
                self._limits.requests.report(None)

            # The limiter hears every answer (report above): it alone decides whether a
            # throttle slows or pauses the fleet; the retry only waits for this request.
            await call_with_retries(
                attempt,
                destructive=True,
                policy=self._settings.retry,
                budget=self._budget,
                clock=self._clock,
                rng=self._rng,
            )

    async def _readiness(self, job: Job, deadline: float, started: float) -> ReadyResult:
        # Counted from the recorded acceptance on resume, from now otherwise.
        accepted = self._clock.monotonic()
        if job.accepted_already and job.accepted_at is not None:
            accepted = started - max(0.0, self._clock.time() - job.accepted_at)
        host: str | None = None
        if job.proof is not None:
            host = await self._address(job)
            if host is None:
                return ReadyResult(False, "no IP address known for the ssh proof", 0.0, 0)
            return await self.prover.wait(job.kvm_id, job.proof, host, job.port, deadline)
        if job.readiness is ReadinessMode.TCP:
            host = await self._polled(lambda: self._api.address(job.kvm_id))
            if host is None:
                return ReadyResult(False, "no IP address known for the tcp probe", 0.0, 0)

        async def power() -> str:
            return await self._polled(lambda: self._api.power(job.kvm_id))

        return await wait_ready(
            job.readiness,
            clock=self._clock,
            deadline_seconds=deadline,
            min_install_seconds=min(job.min_install_s, deadline),
            poll_interval=job.poll_interval_s,
            accepted_at=accepted,
            power=power,
            host=host,
            port=job.port,
            rng=random.Random(job.kvm_id),
        )

    async def _address(self, job: Job) -> str | None:
        """The VPS's IPv4 address (``get/details``, asked once per run); None if unknown."""
        if job.kvm_id not in self._addresses:
            try:
                self._addresses[job.kvm_id] = await self._polled(
                    lambda: self._api.address(job.kvm_id)
                )
            except ApiError:
                return None  # not remembered: the next look asks again
        return self._addresses[job.kvm_id]

    async def _scan(self, job: Job) -> str | None:
        """Readiness mode ssh: record the host key the VPS presents just before its send and
        return it for the journal (``""``: nothing answered; None: no address to scan)."""
        host = await self._address(job)
        if host is None:
            return None
        return await self.prover.before_send(job.kvm_id, host, job.port)

    async def _polled(self, fn: Callable[[], Awaitable[T]]) -> T:
        await self._limits.requests.acquire("poll")
        try:
            result = await fn()
        except ApiError as exc:
            self._limits.requests.report(exc)
            raise
        self._limits.requests.report(None)
        return result

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


class _Skipped(Exception):
    """Internal: a job reached its send slot after the run stopped sending."""
