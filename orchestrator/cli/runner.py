"""Wiring one run: client, session book, limits, pre-flight, journal, scheduler, signals.

``apply`` and ``resume`` build a ``RunSpec`` (what to send, to whom, how) and call
``execute``. Everything with a lifetime lives inside it: the HTTP sessions, the journal and
its locks, the signal receiver. First SIGINT/SIGTERM drains the run; a second one stops it.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from orchestrator.clock import SystemClock
from orchestrator.edis.api import EdisFleetAPI, LimitedAuth, ReadRetries
from orchestrator.edis.client import EdisClient
from orchestrator.edis.session import SessionBook
from orchestrator.errors import PreflightError
from orchestrator.journal import Journal, JournalSink, RunStatus, TargetSpec
from orchestrator.limits import Limits
from orchestrator.model import Attempt, Clock, EventSink, TargetEvent, TargetState
from orchestrator.preflight import Check, preflight
from orchestrator.retry import RetryBudget
from orchestrator.scheduler import RunResult, RunSettings, Scheduler, WaveSpec
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
    journal_path: Path
    manifest_path: str
    manifest_sha256: str
    plan_sha256: str
    options: dict[str, Any]
    targets: Sequence[TargetSpec] = ()
    run_id: str | None = None
    sinks: Sequence[EventSink] = ()
    redact: Callable[[str], str] = str
    stderr: TextIO = field(default=sys.stderr)


@dataclass
class RunOutcome:
    """What ``execute`` returns: the run id, the scheduler's result and the run's status."""

    run_id: str
    result: RunResult
    status: RunStatus


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


def run_status(result: RunResult) -> RunStatus:
    """Return the journal status of a finished run."""
    if result.interrupted:
        return RunStatus.INTERRUPTED
    if result.aborted is not None:
        return RunStatus.ABORTED
    if result.count(TargetState.FAILED):
        return RunStatus.FAILED
    if result.count(TargetState.IN_DOUBT):
        return RunStatus.IN_DOUBT
    return RunStatus.DONE


async def execute(spec: RunSpec, *, clock: Clock | None = None) -> RunOutcome:
    """Pre-flight, then run the waves with the journal and signals wired in.

    Raises ``PreflightError`` (nothing sent), ``AuthenticationError``, ``LockedError``,
    ``JournalError`` and ``HostNotAllowedError`` before the first reinstall.
    """
    clock = clock or SystemClock()
    limits = Limits.create(concurrency=spec.concurrency, rate=spec.rate, clock=clock)
    journal = await Journal.open(spec.journal_path, clock=clock, redactor=spec.redact)
    try:
        run_id = spec.run_id
        if run_id is None:
            run_id = await journal.create_run(
                manifest_path=spec.manifest_path,
                manifest_sha256=spec.manifest_sha256,
                plan_sha256=spec.plan_sha256,
                options=spec.options,
            )
            await journal.add_targets(run_id, spec.targets)
        else:
            await journal.reopen_run(run_id)
        kvm_ids = [job.kvm_id for wave in spec.waves for job in wave.jobs]
        await journal.acquire_locks(run_id, kvm_ids)
        journal_run = run_id

        def on_attempt(attempt: Attempt) -> None:
            journal.enqueue_attempt(journal_run, attempt)

        account = spec.account
        async with EdisClient(
            session_url=account.session_url,
            email=account.email,
            password=account.password,
            allowed_hosts=account.allowed_hosts,
            ca_file=account.ca_file,
            max_connections=max(spec.concurrency, 10),
            clock=clock,
            on_attempt=on_attempt,
        ) as client:
            budget = RetryBudget()
            reads = ReadRetries(clock=clock, budget=budget, limiter=limits.requests)
            book = SessionBook(LimitedAuth(client, limits.requests, reads), clock=clock)
            checks = [Check(job.kvm_id, job.image) for wave in spec.waves for job in wave.jobs]
            found = await preflight(
                checks, client=client, book=book, retries=reads, limiter=limits.requests
            )
            if not found.ok:
                await journal.finish_run(run_id, RunStatus.FAILED)
                raise PreflightError(found.problems)
            sink = FanOut([JournalSink(journal, run_id), *spec.sinks])
            scheduler = Scheduler(
                EdisFleetAPI(client, book, reads),
                sink,
                clock=clock,
                limits=limits,
                settings=spec.settings,
                budget=budget,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal.run_flusher)
                tg.start_soon(_heartbeat, journal, run_id, clock)
                tg.start_soon(_watch_signals, scheduler, run_id, spec.stderr)
                result = await scheduler.run(spec.waves)
                tg.cancel_scope.cancel()
            status = run_status(result)
            await journal.save_progress(
                run_id,
                failures=result.count(TargetState.FAILED) + result.count(TargetState.IN_DOUBT),
                retries=budget.retries,
                counters={
                    "throttles": limits.requests.throttles,
                    "session_refreshes": book.refreshes,
                },
            )
            await journal.finish_run(run_id, status)
            return RunOutcome(run_id, result, status)
    finally:
        with anyio.CancelScope(shield=True):
            await journal.close()


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
