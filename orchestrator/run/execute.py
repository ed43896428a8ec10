"""Wiring one run: client, session book, limits, pre-flight, journal, scheduler, signals.

``apply`` and ``resume`` build a ``RunSpec`` (what to send, to whom, how) and call
``execute``. Everything with a lifetime lives inside it: the HTTP sessions, the journal and
its locks, the signal receiver. First SIGINT/SIGTERM drains the run; a second one stops it.
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TextIO, runtime_checkable

import anyio

from orchestrator.clock import SystemClock
from orchestrator.edis.client import EdisClient
from orchestrator.edis.session import SessionBook
from orchestrator.errors import JournalError, LockedError, PreflightError
from orchestrator.journal import (
    AttemptRecord,
    Journal,
    JournalConfig,
    JournalSink,
    RunRecord,
    RunStatus,
    TargetRecord,
    TargetSpec,
)
from orchestrator.model import Attempt, Clock, EventSink, TargetEvent, TargetState
from orchestrator.report.contract import Tally, judge_records
from orchestrator.report.recovery import recovery
from orchestrator.run.api import EdisFleetAPI, LimitedAuth, ReadRetries
from orchestrator.run.boundary import close_down
from orchestrator.run.jobs import RunResult, RunSettings, WaveSpec
from orchestrator.run.limits import Limits
from orchestrator.run.phase import WatchesPhase
from orchestrator.run.preflight import Check, preflight
from orchestrator.run.reconcile import counters as reconcile_counters
from orchestrator.run.retry import RetryBudget
from orchestrator.run.scheduler import Scheduler
from orchestrator.run.stats import RunStats
from orchestrator.secrets import Secret

HEARTBEAT_S = 30.0


@dataclass(frozen=True)
class Account:
    """Where and as whom to talk to the API."""

    session_url: str
    email: str
    password: Secret
    allowed_hosts: tuple[str, ...]
    ca_file: str | None


@dataclass
class RunSpec:
    """Everything ``execute`` needs. ``targets`` describe the journal rows of a new run;
    ``run_id`` set means resume that run instead of creating one."""

    account: Account
    waves: Sequence[WaveSpec]
    settings: RunSettings
    concurrency: int
    rate: float
    # Where the run is journaled (SQLite or PostgreSQL), as whom, and the host lock directory.
    journal: JournalConfig
    manifest_path: str
    manifest_sha256: str
    plan_sha256: str
    options: dict[str, Any]
    targets: Sequence[TargetSpec] = ()
    run_id: str | None = None
    prior_failures: dict[int, int] = field(default_factory=dict)
    # Host names of the run's VPSes for progress and event lines (resume has no new targets).
    hostnames: dict[str, str] = field(default_factory=dict)
    # Resume: when each wave became ready, as recorded (the soak after it is served in full).
    wave_ready: dict[int, float] = field(default_factory=dict)
    sinks: Sequence[EventSink] = ()
    progress: ProgressView | None = None
    redact: Callable[[str], str] = str
    stderr: TextIO = field(default=sys.stderr)


@runtime_checkable
class KnowsRun(Protocol):
    """A watcher whose lines carry the run id (``NdjsonSink``, the progress view)."""

    run_id: str | None


class ProgressView(EventSink, Protocol):
    """A live view of the run: an ``EventSink`` that is started and stopped around the waves,
    ticks while they run, and reads the run's live numbers from ``stats``."""

    stats: RunStats

    def start(self) -> None:
        """Start showing the run."""

    def stop(self) -> None:
        """Stop showing the run."""

    async def ticker(self) -> None:
        """Refresh the view until cancelled."""


@dataclass
class RunOutcome:
    """What ``execute`` returns: the run id, the scheduler's result, the run's status and the
    journal's records of the run (for the reports), judged as a whole (``tally``: counts,
    verdict and exit code of every VPS of the run, not only those this invocation touched)."""

    run_id: str
    result: RunResult
    status: RunStatus
    run: RunRecord
    targets: list[TargetRecord]
    attempts: list[AttemptRecord]
    tally: Tally


class FanOut:
    """An ``EventSink`` that forwards to several sinks; the first one's ``before_send`` is the
    durable one (the journal), the others only watch."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self._sinks = list(sinks)

    async def before_send(self, kvm_id: str, wave: int) -> None:
        """Make the intent durable (journal first), then tell the watchers."""
        for sink in self._sinks:
            await sink.before_send(kvm_id, wave)

    def emit(self, event: TargetEvent) -> None:
        """Forward ``event`` to every sink."""
        for sink in self._sinks:
            sink.emit(event)


def stopped_as(result: RunResult) -> RunStatus:
    """How this invocation stopped: interrupted, aborted by a budget, or completed (``done``;
    the run's final status is then judged from all its VPSes, ``report.contract.judge``)."""
    if result.interrupted:
        return RunStatus.INTERRUPTED
    if result.aborted is not None:
        return RunStatus.ABORTED
    return RunStatus.DONE


async def judge_run(journal: Journal, run_id: str, stopped: RunStatus) -> Tally:
    """Judge the whole run as the journal records it (every VPS, the RTO of its options)."""
    record = await journal.run(run_id)
    targets = await journal.targets(run_id)
    rec = recovery(replace(record, status=stopped), targets)
    return judge_records(stopped, targets, rto_met=rec.rto_met)


class _AttemptRecorder:
    """The client's ``on_attempt``: attempts made before the run exists in the journal
    (pre-flight) are kept and written once it does."""

    def __init__(self) -> None:
        self._early: list[Attempt] = []
        self._journal: Journal | None = None
        self._run_id = ""

    def __call__(self, attempt: Attempt) -> None:
        if self._journal is None:
            self._early.append(attempt)
        else:
            self._journal.enqueue_attempt(self._run_id, attempt)

    def attach(self, journal: Journal, run_id: str) -> None:
        self._journal, self._run_id = journal, run_id
        for attempt in self._early:
            journal.enqueue_attempt(run_id, attempt)
        self._early.clear()


async def execute(spec: RunSpec, *, clock: Clock | None = None) -> RunOutcome:
    """Pre-flight, then run the waves with the journal and signals wired in.

    Raises ``PreflightError`` (nothing sent, no run recorded), ``AuthenticationError``,
    ``LockedError``, ``JournalError`` and ``HostNotAllowedError`` before the first reinstall.
    Once the run is recorded, every error goes through the boundary (``run.boundary``):
    ``AuthenticationError`` (credentials refused mid-run, run ``aborted``) or ``RunCrashed``
    (run ``crashed``, resumable).
    """
    clock = clock or SystemClock()
    limits = Limits.create(concurrency=spec.concurrency, rate=spec.rate, clock=clock)
    recorder = _AttemptRecorder()
    account = spec.account
    async with EdisClient(
        session_url=account.session_url,
        email=account.email,
        password=account.password,
        allowed_hosts=account.allowed_hosts,
        ca_file=account.ca_file,
        max_connections=max(spec.concurrency, 10),
        clock=clock,
        on_attempt=recorder,
    ) as client:
        budget = RetryBudget()
        reads = ReadRetries(clock=clock, budget=budget, limiter=limits.requests)
        book = SessionBook(LimitedAuth(client, limits.requests, reads), clock=clock)
        checks = [Check(job.kvm_id, job.image) for wave in spec.waves for job in wave.jobs]
        watcher = spec.progress if isinstance(spec.progress, WatchesPhase) else None
        found = await preflight(
            checks, client=client, book=book, retries=reads, limiter=limits.requests,
            on_progress=None if watcher is None else watcher.preflight,
        )  # fmt: skip
        if not found.ok:
            raise PreflightError(found.problems)
        journal = await Journal.open(
            spec.journal,
            clock=clock,
            redactor=spec.redact,
            host_locks=spec.journal.host_locks(account.session_url, account.email),
        )
        crashed = False
        try:
            run_id = await _open_run(journal, spec)
            try:
                wiring = _Wiring(clock, limits, recorder, budget, client, book, reads)
                return await _run_recorded(journal, run_id, spec, wiring)
            except Exception as exc:
                crashed = True
                raise await close_down(
                    journal, run_id, exc, config=spec.journal, redact=spec.redact
                ) from exc
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await journal.close()
                except JournalError:
                    if not crashed:
                        raise


@dataclass(frozen=True)
class _Wiring:
    """What ``execute`` built before the run was recorded, for ``_run_recorded``."""

    clock: Clock
    limits: Limits
    recorder: _AttemptRecorder
    budget: RetryBudget
    client: EdisClient
    book: SessionBook
    reads: ReadRetries


async def _run_recorded(journal: Journal, run_id: str, spec: RunSpec, w: _Wiring) -> RunOutcome:
    """Run the waves of a recorded run and record how it ended (the whole run judged, as
    ``report.contract`` says); return the outcome."""
    clock, limits, budget, book = w.clock, w.limits, w.budget, w.book
    w.recorder.attach(journal, run_id)
    for watcher in (*spec.sinks, *_opt(spec.progress)):
        if isinstance(watcher, KnowsRun):
            # Created before the run had an id: every event and log line carries it.
            watcher.run_id = run_id
    if spec.progress is not None:
        spec.progress.stats = RunStats.of_limiter(
            limits.requests,
            retries=lambda: budget.retries,
            refreshes=lambda: book.refreshes,
        )
    ready = dict(spec.wave_ready)

    async def wave_ready(index: int, at: float) -> None:
        ready[index] = at
        await journal.save_progress(run_id, wave_ready=ready)

    scheduler = Scheduler(
        EdisFleetAPI(w.client, book, w.reads),
        FanOut([JournalSink(journal, run_id), *spec.sinks, *_opt(spec.progress)]),
        clock=clock,
        limits=limits,
        settings=spec.settings,
        budget=budget,
        prior_failures=spec.prior_failures,
        wave_ready=spec.wave_ready,
        on_wave_ready=wave_ready,
    )
    # The view says why the run waits: soak, budgets, session refreshes.
    scheduler.phase.refreshing = lambda: book.refreshing
    _show_phase(spec.progress, scheduler)
    # Everything built so far (the fleet, the jobs, rendered user data) lives for the
    # whole run: freezing it keeps full collections during the run from walking it again
    # and again (measured: a third of the client's CPU on 20,000 VPSes).
    gc.freeze()
    try:
        result = await _run_waves(scheduler, journal, run_id, spec, clock)
    finally:
        # A library caller's process goes on after the run: hand the heap back.
        gc.unfreeze()
    stopped = stopped_as(result)
    whole = await judge_run(journal, run_id, stopped)
    await journal.save_progress(
        run_id,
        # The whole run's failures, not only this invocation's (resume).
        failures=whole.count(TargetState.FAILED) + whole.in_doubt,
        retries=budget.retries,
        counters={
            "throttles": limits.requests.throttles,
            "session_refreshes": book.refreshes,
            **limits.requests.counters(),
            # How in-doubt sends were resolved by proof (rollout.in_doubt: reconcile).
            **reconcile_counters(scheduler.reconciled),
        },
    )
    record = await journal.finish_run(run_id, whole.status)
    targets = await journal.targets(run_id)
    attempts = await journal.attempts(run_id)
    return RunOutcome(run_id, result, whole.status, record, targets, attempts, whole)


async def _open_run(journal: Journal, spec: RunSpec) -> str:
    """Create the run (or reopen the one being resumed) and lock its VPSes."""
    run_id = spec.run_id
    if run_id is None:
        run_id = await journal.create_run(
            manifest_path=spec.manifest_path,
            manifest_sha256=spec.manifest_sha256,
            plan_sha256=spec.plan_sha256,
            options=spec.options,
        )
        await journal.add_targets(run_id, spec.targets)
    try:
        # Before a resumed run is reopened: refused as busy, it stays as it was recorded.
        await journal.acquire_locks(run_id, [job.kvm_id for w in spec.waves for job in w.jobs])
    except LockedError:
        if spec.run_id is None:
            # Refused before anything was sent: recorded busy (exit 6), not left running;
            # resume runs it once the other run is gone.
            with anyio.CancelScope(shield=True):
                await journal.finish_run(run_id, RunStatus.BUSY)
        raise
    if spec.run_id is not None:
        await journal.reopen_run(run_id)
    return run_id


async def _run_waves(
    scheduler: Scheduler, journal: Journal, run_id: str, spec: RunSpec, clock: Clock
) -> RunResult:
    """Run the scheduler beside the journal's flusher and heartbeat, progress and signals."""
    progress = spec.progress
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run_flusher)
        tg.start_soon(_heartbeat, journal, run_id, clock)
        tg.start_soon(_watch_signals, scheduler, run_id, spec.stderr)
        if progress is not None:
            progress.start()
            tg.start_soon(progress.ticker)
        try:
            result = await scheduler.run(spec.waves)
        finally:
            if progress is not None:
                progress.stop()
        tg.cancel_scope.cancel()
    return result


def _show_phase(view: object, scheduler: Scheduler) -> None:
    """Hand the scheduler's phase to a view that shows it."""
    if isinstance(view, WatchesPhase):
        view.phase = scheduler.phase


def _opt(sink: EventSink | None) -> list[EventSink]:
    return [] if sink is None else [sink]


async def _heartbeat(journal: Journal, run_id: str, clock: Clock) -> None:
    while True:
        await clock.sleep(HEARTBEAT_S)
        await journal.heartbeat(run_id)


async def _watch_signals(scheduler: Scheduler, run_id: str, err: TextIO) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for _ in signals:
            count += 1
            if count == 1:
                err.write(
                    "\ndraining: no new reinstall is sent; in-flight calls finish and are "
                    "recorded. Press Ctrl-C again to stop at once.\n"
                )
                err.flush()
                scheduler.drain()
            else:
                err.write("\nstopping now: in-flight reinstalls are recorded as in doubt.\n")
                err.flush()
                scheduler.cancel()
                return
