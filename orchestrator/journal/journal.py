"""The run journal: runs, targets, attempts; intents before sends; resume; per-VPS locks.

Two backends behind this one API: a SQLite file (``store.py``, the default: one operator, one
machine) and a PostgreSQL database (``pg_store.py``: runners on several machines share it,
so its locks and runs hold across machines). ``location.py`` tells them apart and keeps the
database password out of every message; ``hostlock.py`` adds the host-wide locks that keep two
runs of one machine apart even when they use different journals.

``set/reinstall`` wipes a disk and has no idempotency key, so the journal is what makes "resume
without reinstalling anything twice" possible: an *intent* for a VPS is durable before its POST
leaves, its outcome is written after, and after a crash an intent without an outcome reads as
*in doubt*, never as "not sent". The schema, its states and its version are documented in
``journal_schema``.

How a run uses it (the cli wires it; the scheduler sees only ``JournalSink``, its
``model.EventSink``, from ``journal_sink``)::

    journal = await Journal.open(path, clock=clock, redactor=redactor)
    run_id = await journal.create_run(manifest_path=..., manifest_sha256=..., plan_sha256=...)
    await journal.add_targets(run_id, specs)
    await journal.acquire_locks(run_id, kvm_ids)      # LockedError: another live run has some
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run_flusher)            # buffered outcomes: committed in 0.5 s
        tg.start_soon(heartbeats)                     # every 30 s: await journal.heartbeat(run_id)
        result = await Scheduler(api, JournalSink(journal, run_id), ...).run(waves)
        tg.cancel_scope.cancel()
    await journal.finish_run(run_id, RunStatus.DONE)
    await journal.close()                             # flushes, releases this process's locks

Around each reinstall, directly or through ``JournalSink``::

    await journal.write_intents(run_id, [kvm_id])     # durable when it returns; only then POST
    ... POST set/reinstall ...
    await journal.record_attempt(run_id, attempt)     # buffered
    await journal.record_outcome(run_id, kvm_id, TargetState.ACCEPTED)
    #   not sent / throttled / session → PENDING, then a new intent before the resend;
    #   rejected → FAILED; in doubt → IN_DOUBT; after readiness → READY or FAILED
    await journal.save_progress(run_id, wave=2, failures=1, retries=7)   # durable

Durability without a disk flush per VPS (group commit): every write goes into an in-memory
batch. A caller that needs durability (``write_intents``, ``save_progress``, ``flush``, a
``durable=True`` outcome) waits for the writer lock; the first one to get it writes the whole
batch — outcomes and attempts first, then intents, so an earlier outcome always precedes a later
intent for the same VPS — in ONE transaction, while callers that arrive meanwhile gather in the
next batch. N concurrent senders thus cost a handful of commits, not N. Outcomes and attempts
without ``durable`` are only written with the next batch, when ``max_buffered`` rows wait, when
the oldest is ``max_delay`` seconds old, or on ``flush``/``close``; a crash loses at most those,
which resume then reports as in doubt — the safe side.

SQLite calls block, so they run in a worker thread (``anyio.to_thread``) on the one connection,
one at a time (an ``anyio.Lock``), and the event loop stays free. Constructing a ``Journal``
opens the file synchronously; inside an event loop use ``await Journal.open(...)``.

Safety nets beyond the intents: an intent is refused (``JournalError``) for a VPS that is not a
target of the run, whose reinstall was already accepted, that has an unresolved intent, or whose
lock this process does not hold — so a run whose stale lock was taken over cannot send.
Nothing secret is written: no passwords, signatures or user data (only its SHA-256); server
messages and reasons pass through the ``Redactor``; secret-looking option keys are masked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import anyio.lowlevel

from orchestrator.clock import SystemClock
from orchestrator.errors import JournalError, LockedError
from orchestrator.journal.batch import Batch, IntentRequest
from orchestrator.journal.hostlock import HostLocks
from orchestrator.journal.location import JournalConfig
from orchestrator.journal.records import (
    AttemptRecord,
    LockRecord,
    LockTakeover,
    RunRecord,
    RunStatus,
    TargetRecord,
    TargetSpec,
    mask_options,
)
from orchestrator.journal.resume import ResumeClassification, classify_targets
from orchestrator.journal.schema import OUTCOME_FROM
from orchestrator.journal.store import Store
from orchestrator.model import Attempt, Clock, TargetState

if TYPE_CHECKING:
    from orchestrator.journal.pg_store import PgStore

__all__ = [
    "Journal",
    "LockTakeover",
    "ResumeClassification",
    "RunRecord",
    "RunStatus",
    "TargetRecord",
    "TargetSpec",
    "TargetState",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _unique(kvm_ids: Iterable[str]) -> tuple[str, ...]:
    ids = tuple(kvm_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("kvm ids must be unique")
    return ids


@dataclass(eq=False)
class _Ticket:
    """The fate of one batch, shared by every caller who put something into it."""

    done: bool = False
    error: JournalError | None = None
    refused: dict[IntentRequest, str] = field(default_factory=dict)


class Journal:
    """The run journal in one SQLite file or a PostgreSQL database. See the module docstring
    for the protocol.

    ``path`` is a SQLite file, a ``postgresql://`` URL or a ``JournalConfig`` (which also
    gives the host name and, with ``host_locks``, the host-wide locks). ``host_locks``, when
    given, are taken with the journal's own locks and released on ``close``.

    ``clock`` gives timestamps (its wall time) and the age of buffered rows (its monotonic
    time); ``redactor`` (e.g. a ``secrets.Redactor``) filters every server message and reason;
    ``pid``/``hostname`` identify this process in locks (injectable for tests);
    ``lock_stale_after`` is the heartbeat age in seconds after which another run's lock may be
    taken over; ``busy_timeout`` is how long to wait for another process's write;
    ``max_buffered`` and ``max_delay`` bound how many non-durable rows may wait for a commit,
    and for how long. Raises ``JournalError`` when the file cannot be opened, is not a journal,
    or has a newer schema than this code knows.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | JournalConfig,
        *,
        clock: Clock | None = None,
        redactor: Callable[[str], str] | None = None,
        pid: int | None = None,
        hostname: str | None = None,
        lock_stale_after: float = 120.0,
        busy_timeout: float = 10.0,
        max_buffered: int = 512,
        max_delay: float = 0.5,
        host_locks: HostLocks | None = None,
    ) -> None:
        config = path if isinstance(path, JournalConfig) else JournalConfig(os.fspath(path))
        self.config = config
        #: The SQLite file, or the URL of a PostgreSQL journal with its password as ``***``.
        self.path: Path | str = config.shown if config.is_url else config.path
        self._clock: Clock = clock or SystemClock()
        self._redact: Callable[[str], str] = redactor or str
        self._max_buffered = max_buffered
        self._max_delay = max_delay
        self._host_locks = host_locks
        me = os.getpid() if pid is None else pid
        host = hostname or config.hostname or socket.gethostname()
        self._store: Store | PgStore
        if config.is_url:
            # Imported here: psycopg is loaded only when a PostgreSQL journal is opened.
            from orchestrator.journal.pg_store import PgStore  # noqa: PLC0415

            conninfo, password = config.conninfo()
            self._store = PgStore(
                conninfo,
                shown=config.shown,
                secrets=[conninfo] + ([password.reveal()] if password else []),
                pid=me,
                hostname=host,
                busy_timeout=busy_timeout,
                stale_after=lock_stale_after,
            )
        else:
            self._store = Store(
                config.path,
                pid=me,
                hostname=host,
                busy_timeout=busy_timeout,
                stale_after=lock_stale_after,
            )
        # Set while a call runs on the connection; the others wait for it (see ``_hold``).
        self._busy: anyio.Event | None = None
        # Our own thread slot: a thread pool busy with other work never delays a commit.
        self._limiter = anyio.CapacityLimiter(1)
        self._batch = Batch()
        self._ticket = _Ticket()
        self._oldest: float | None = None
        self._held: dict[str, set[str]] = {}
        self._closed = False

    @classmethod
    async def open(cls, path: str | os.PathLike[str] | JournalConfig, **kwargs: Any) -> Journal:
        """Construct a journal in a worker thread, keeping the loop free; arguments and errors
        as the constructor."""
        return await anyio.to_thread.run_sync(partial(cls, path, **kwargs))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def schema_version(self) -> int:
        """The schema version of the file (``journal_schema.SCHEMA_VERSION`` once open)."""
        return self._store.schema_version

    @property
    def commits(self) -> int:
        """How many write transactions this instance committed (batches and single writes)."""
        return self._store.commits

    @property
    def ignored_outcomes(self) -> list[tuple[str, str, TargetState, str | None]]:
        """Outcomes not applied because they did not fit the target's state:
        ``(run_id, kvm_id, wanted state, state found or None)``. Empty unless there is a bug
        upstream."""
        return self._store.ignored_outcomes

    @property
    def pid(self) -> int:
        """The process id this journal takes locks as."""
        return self._store.pid

    @property
    def hostname(self) -> str:
        """The host name this journal takes locks as."""
        return self._store.hostname

    # ----------------------------------------------------------------- plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self.path} is closed")

    @contextlib.asynccontextmanager
    async def _hold(self, *, check: bool = True) -> AsyncIterator[None]:
        """Hold the connection: one call at a time. Not an ``anyio.Lock`` on purpose: when a
        batch is committed, every caller who joined it wakes at once from the same event and
        returns, instead of taking and passing a lock one after the other."""
        while self._busy is not None:
            await self._busy.wait()
        if check:
            self._check_open()
        self._busy = done = anyio.Event()
        try:
            yield
        finally:
            self._busy = None
            done.set()

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run one ``Store`` call on the worker thread, after any call in flight."""
        self._check_open()
        async with self._hold():
            # Shielded: a transaction, once started, finishes (within the busy timeout).
            with anyio.CancelScope(shield=True):
                result = await anyio.to_thread.run_sync(fn, limiter=self._limiter)
        return result

    async def _commit(self, ticket: _Ticket) -> None:
        """Return once the batch of ``ticket`` is committed, writing it if nobody has yet.

        This is the group commit: the first caller to get hold of the connection writes the
        whole batch, everyone else who joined it finds it done. Raises ``JournalError`` if
        that commit failed.
        """
        # A caller cancelled before its batch is written leaves (write_intents takes its
        # intent back); once writing started, the commit finishes.
        await anyio.lowlevel.checkpoint_if_cancelled()
        while not ticket.done:
            async with self._hold():
                if not ticket.done:
                    await self._write_batch_held()
        if ticket.error is not None:
            raise JournalError(str(ticket.error)) from ticket.error

    async def _write_batch_held(self) -> None:
        # Let callers that are ready in this same turn of the loop join the batch first.
        await anyio.lowlevel.cancel_shielded_checkpoint()
        # The batch and its ticket are swapped out together, with no await in between, so
        # everything added from now on belongs to the next batch.
        ticket, batch = self._ticket, self._batch
        self._ticket, self._batch, self._oldest = _Ticket(), Batch(), None
        try:
            if batch:
                with anyio.CancelScope(shield=True):
                    ticket.refused = await anyio.to_thread.run_sync(
                        self._store.write_batch, batch, limiter=self._limiter
                    )
        except Exception as exc:
            ticket.error = exc if isinstance(exc, JournalError) else JournalError(repr(exc))
            # Outcomes, attempts and progress go again with the next batch; the intents'
            # callers get the error and send nothing.
            self._batch.take_back(batch)
        finally:
            ticket.done = True

    def _enqueued(self) -> bool:
        """Start the age clock of the batch; return whether it should be committed now."""
        now = self._clock.monotonic()
        if self._oldest is None:
            self._oldest = now
        return len(self._batch) >= self._max_buffered or now - self._oldest >= self._max_delay

    # ----------------------------------------------------------------- runs and targets

    async def create_run(
        self,
        *,
        manifest_path: str,
        manifest_sha256: str,
        plan_sha256: str,
        options: Mapping[str, Any] | None = None,
    ) -> str:
        """Record a new run (status ``running``, owned by this process) and return its id.

        ``options`` must be JSON data; values under secret-looking keys are masked and the text
        is redacted. Raises ``JournalError`` when the write fails, ``TypeError`` for options
        that are not JSON data.
        """
        opts = self._redact(json.dumps(mask_options(dict(options or {})), sort_keys=True))
        now = self._clock.time()
        return await self._call(
            partial(self._store.create_run, manifest_path, manifest_sha256, plan_sha256, opts, now)
        )

    async def add_targets(self, run_id: str, targets: Iterable[TargetSpec]) -> None:
        """Add the run's VPSes, all ``pending``, in one transaction.

        Raises ``ValueError`` for a repeated kvm id or a ``user_data_sha256`` that is not a hex
        SHA-256 digest, ``JournalError`` for an unknown run or a VPS already in the run.
        """
        specs = list(targets)
        _unique(t.kvm_id for t in specs)
        for t in specs:
            if t.user_data_sha256 is not None and not _SHA256.fullmatch(t.user_data_sha256):
                raise ValueError(f"{t.kvm_id}: user_data_sha256 is not a SHA-256 hex digest")
        now = self._clock.time()
        rows = [
            (run_id, t.kvm_id, t.wave, t.position, t.image, t.hostname,
             t.user_data_sha256 and t.user_data_sha256.lower(), now)
            for t in specs
        ]  # fmt: skip
        await self._call(partial(self._store.add_targets, rows))

    async def write_intents(
        self, run_id: str, kvm_ids: Iterable[str], *, resend: bool = False
    ) -> None:
        """Durably record that the reinstall POSTs for ``kvm_ids`` are about to leave.

        ``resend`` marks the in-doubt resend after the install window: it is refused for a VPS
        already resent in this run (at most one resend per VPS per run, across any number of
        kills) and recorded as ``resent_at``.

        Returns only after the commit; concurrent callers share one transaction. All of
        ``kvm_ids`` are written or none: raises ``JournalError`` (nothing written for this
        call: send none of them) when one is not a target of the run, is ``intent``,
        ``accepted`` or ``ready`` already, or is not locked by this process, or when the commit
        fails. Raises ``ValueError`` for repeated ids.
        """
        ids = _unique(kvm_ids)
        if not ids:
            return
        self._check_open()
        req = IntentRequest(run_id, ids, self._clock.time(), resend=resend)
        ticket = self._ticket
        self._batch.intents.append(req)
        self._enqueued()
        try:
            await self._commit(ticket)
        except anyio.get_cancelled_exc_class():
            # Cancelled before anyone wrote it: take it back, so an intent that was never sent
            # does not turn up as in doubt later.
            if not ticket.done:
                self._batch.intents = [r for r in self._batch.intents if r is not req]
            raise
        problem = ticket.refused.get(req)
        if problem:
            raise JournalError(f"intent refused: {problem}")

    async def record_outcome(
        self,
        run_id: str,
        kvm_id: str,
        state: TargetState,
        *,
        reason: str = "",
        durable: bool = False,
    ) -> None:
        """Record what became of a VPS's reinstall: ``state`` is ``pending`` (the POST was not
        sent: not sent, throttled, session), ``accepted``, ``ready``, ``failed``, ``in_doubt``
        or ``skipped``; ``reason`` is redacted.

        Buffered unless ``durable`` (then it returns after the commit). An outcome that does not
        fit the target's current state is not applied (see ``ignored_outcomes``). Raises
        ``ValueError`` for ``intent`` (that is ``write_intents``), ``JournalError`` when a
        commit it waits for fails.
        """
        ticket = self._ticket
        self.enqueue_outcome(run_id, kvm_id, state, reason=reason)
        if self._enqueued() or durable:
            await self._commit(ticket)

    def enqueue_outcome(
        self,
        run_id: str,
        kvm_id: str,
        state: TargetState,
        *,
        reason: str = "",
        at: float | None = None,
    ) -> None:
        """Buffer an outcome like ``record_outcome`` without waiting for anything (``at``
        defaults to now). It is committed with the next batch, by ``flush`` or by
        ``run_flusher``. Raises ``ValueError`` for ``intent``, ``JournalError`` when closed."""
        state = TargetState(state)
        if state not in OUTCOME_FROM:
            raise ValueError(f"{state.value} is not an outcome; use write_intents")
        self._check_open()
        when = self._clock.time() if at is None else at
        self._batch.outcomes.append((run_id, kvm_id, state, self._redact(reason), when))
        if self._oldest is None:
            self._oldest = self._clock.monotonic()

    def enqueue_resend_decision(self, run_id: str, kvm_id: str, at: float | None = None) -> None:
        """Buffer the in-doubt policy's decision to resend ``kvm_id`` once its install window
        (counted from the recorded ``sent_at``) has passed: resume then serves the rest of
        that window and resends, instead of leaving the VPS in doubt. Ignored for a VPS
        already resent. Raises ``JournalError`` when closed."""
        self._check_open()
        self._batch.resends.append((self._clock.time() if at is None else at, run_id, kvm_id))
        if self._oldest is None:
            self._oldest = self._clock.monotonic()

    def enqueue_host_facts(
        self,
        run_id: str,
        kvm_id: str,
        *,
        presend_key: str | None = None,
        proof: str | None = None,
        known_hosts: str | None = None,
    ) -> None:
        """Buffer what readiness mode ssh learnt of ``kvm_id`` (public keys only, no secret):
        ``presend_key`` the host key scanned just before its send (``""``: nothing answered),
        ``proof`` which proof its reinstall got, ``known_hosts`` its proven host key as a
        known_hosts line. None leaves a fact as it is. The batch writes facts before intents:
        a pre-send key buffered before ``write_intents`` is durable with that intent. Raises
        ``JournalError`` when closed."""
        self._check_open()
        given = {"presend_key": presend_key, "proof": proof, "known_hosts": known_hosts}
        for column, value in given.items():
            if value is not None:
                self._batch.facts.append((run_id, kvm_id, column, value))
        if self._oldest is None:
            self._oldest = self._clock.monotonic()

    async def record_attempt(self, run_id: str, attempt: Attempt, *, durable: bool = False) -> None:
        """Record one API call of the run, buffered unless ``durable``; its message is redacted.

        Attempts for a run not in the journal are dropped. Raises ``JournalError`` when a
        commit it waits for fails.
        """
        ticket = self._ticket
        self.enqueue_attempt(run_id, attempt)
        if self._enqueued() or durable:
            await self._commit(ticket)

    def enqueue_attempt(self, run_id: str, attempt: Attempt) -> None:
        """Buffer an attempt like ``record_attempt`` without waiting for anything (for a sync
        callback such as the client's ``on_attempt``). Raises ``JournalError`` when closed."""
        self._check_open()
        self._batch.attempts.append(
            (run_id, attempt.kvm_id, self._clock.time(), attempt.endpoint, attempt.outcome.value,
             attempt.status, self._redact(attempt.message), attempt.seconds)
        )  # fmt: skip
        if self._oldest is None:
            self._oldest = self._clock.monotonic()

    async def save_progress(
        self,
        run_id: str,
        *,
        wave: int | None = None,
        failures: int | None = None,
        retries: int | None = None,
        counters: Mapping[str, int] | None = None,
        wave_ready: Mapping[int, float] | None = None,
    ) -> None:
        """Durably store the counters resume carries over: the wave position, the failure and
        retry budgets used, any further named ``counters`` (which replace the stored
        mapping) and ``wave_ready`` (when each wave became ready; replaces the stored one).
        Only the ones given change. Returns after the commit; raises ``JournalError`` when it
        fails."""
        fields: dict[str, Any] = {"updated_at": self._clock.time()}
        if wave is not None:
            fields["wave_position"] = wave
        if failures is not None:
            fields["failures"] = failures
        if retries is not None:
            fields["retries"] = retries
        if counters is not None:
            fields["counters_json"] = json.dumps(dict(counters), sort_keys=True)
        if wave_ready is not None:
            fields["waves_json"] = json.dumps({str(k): v for k, v in wave_ready.items()})
        self._check_open()
        ticket = self._ticket
        self._batch.progress.setdefault(run_id, {}).update(fields)
        self._enqueued()
        await self._commit(ticket)

    async def flush(self) -> None:
        """Return once everything recorded before the call is committed (joins the current
        batch). Raises ``JournalError`` when the commit fails."""
        self._check_open()
        await self._commit(self._ticket)

    async def run_flusher(self, interval: float | None = None) -> None:
        """Flush every ``interval`` seconds (default ``max_delay``) of the clock, so buffered
        outcomes never wait long in a quiet phase. Run it in the scheduler's task group and
        cancel it at the end; never returns."""
        period = self._max_delay if interval is None else interval
        while True:
            await self._clock.sleep(period)
            if len(self._batch):
                await self.flush()

    async def finish_run(self, run_id: str, status: RunStatus, *, error: str = "") -> RunRecord:
        """Flush, then set the run's status and end time; return the run. ``error`` (a
        ``crashed`` run's cause) is redacted and recorded with it.

        ``running`` reopens it for this process instead (resume). Raises ``JournalError`` for
        an unknown run.
        """
        await self.flush()
        fn = partial(
            self._store.set_run_status,
            run_id,
            RunStatus(status),
            self._clock.time(),
            self._redact(error),
        )
        return await self._call(fn)

    async def reopen_run(self, run_id: str) -> RunRecord:
        """Mark a run ``running`` again under this process (for resume) and return it.
        Raises ``JournalError`` for an unknown run."""
        return await self.finish_run(run_id, RunStatus.RUNNING)

    # ----------------------------------------------------------------- reading

    async def runs(self) -> list[RunRecord]:
        """Return every run, oldest first (this instance's pending writes flushed first)."""
        await self.flush()
        return await self._call(self._store.runs)

    async def run(self, run_id: str) -> RunRecord:
        """Return one run with its counters. Raises ``JournalError`` when there is none."""
        await self.flush()
        return await self._call(partial(self._store.run, run_id))

    async def targets(self, run_id: str, *, flush: bool = True) -> list[TargetRecord]:
        """Return the run's targets with their states, in wave and position order (this
        instance's pending writes flushed first, unless not ``flush``: reading a journal that
        can no longer be written)."""
        if flush:
            await self.flush()
        return await self._call(partial(self._store.targets, run_id))

    async def attempts(self, run_id: str, kvm_id: str | None = None) -> list[AttemptRecord]:
        """Return the run's attempts (only ``kvm_id``'s when given), oldest first."""
        await self.flush()
        return await self._call(partial(self._store.attempts, run_id, kvm_id))

    async def resume_classification(self, run_id: str) -> ResumeClassification:
        """Sort the run's targets by what resume must do with them (``ResumeClassification``:
        accepted/ready never again, pending continue, intent without outcome in doubt).
        Raises ``JournalError`` for an unknown run."""
        await self.run(run_id)
        return classify_targets(await self.targets(run_id))

    async def locks(self) -> list[LockRecord]:
        """Return every lock row of the journal, by kvm id."""
        return await self._call(self._store.locks)

    async def lock_takeovers(self, run_id: str) -> list[LockTakeover]:
        """Return the stale locks run ``run_id`` took over, oldest first."""
        return await self._call(partial(self._store.lock_takeovers, run_id))

    # ----------------------------------------------------------------- locks

    async def acquire_locks(self, run_id: str, kvm_ids: Iterable[str]) -> tuple[LockTakeover, ...]:
        """Take the locks of ``kvm_ids`` for this run and process: all or none, in one
        ``BEGIN IMMEDIATE`` transaction.

        Locks this process already holds for the run are refreshed. A lock of another process
        is stale when its pid no longer runs on this host or its heartbeat is older than
        ``lock_stale_after``; stale locks are taken over, recorded in ``lock_takeovers`` and
        returned. Raises ``LockedError`` naming the holding run(s) and VPSes when another live
        process holds any of them (nothing is taken then), ``JournalError`` for an unknown run,
        ``ValueError`` for repeated ids.

        With ``host_locks``, the host-wide locks are taken first (``LockedError`` when a live
        run of this machine holds some, whatever journal it uses), and given back if the
        journal refuses.
        """
        ids = _unique(kvm_ids)
        now = self._clock.time()
        hosts = self._host_locks
        if hosts is not None:
            await self._call(partial(hosts.acquire, run_id, ids))
        try:
            takeovers = await self._call(partial(self._store.acquire_locks, run_id, ids, now))
        except BaseException:
            if hosts is not None:
                with anyio.CancelScope(shield=True):
                    await self._call(partial(hosts.release, ids))
            raise
        self._held.setdefault(run_id, set()).update(ids)
        for t in takeovers:
            _log.warning(
                "journal: took over the lock of %s from run %s: %s",
                t.kvm_id, t.previous_run_id, t.why,
            )  # fmt: skip
        return tuple(takeovers)

    async def heartbeat(self, run_id: str) -> None:
        """Flush pending writes and refresh the heartbeat of this process's locks of ``run_id``.

        Call it well within ``lock_stale_after`` (every 30 s for the default 2 minutes). Raises
        ``LockedError`` naming the new holders when some locks this instance took were taken
        over meanwhile (stop working on those VPSes; intents for them are refused anyway),
        ``JournalError`` when the write fails.
        """
        await self.flush()
        expected = set(self._held.get(run_id, ()))
        fn = partial(self._store.heartbeat, run_id, expected, self._clock.time())
        lost = await self._call(fn)
        if lost:
            self._held[run_id] = expected - {k for ids in lost.values() for k in ids}
            raise LockedError(lost, detail=" — locks of this run were taken over")

    async def release_locks(self, run_id: str) -> int:
        """Flush, then release this process's locks of ``run_id``; return how many."""
        await self.flush()
        self._held.pop(run_id, None)
        return await self._call(partial(self._store.release_locks, run_id))

    # ----------------------------------------------------------------- closing

    async def close(self) -> None:
        """Flush pending writes, release the locks this instance took, and close the file.

        Idempotent. Raises ``JournalError`` when the final writes fail (the file is closed
        anyway; buffered outcomes are lost and their VPSes read as in doubt on resume).
        """
        if self._closed:
            return
        try:
            await self.flush()
            for run_id in list(self._held):
                await self.release_locks(run_id)
        finally:
            async with self._hold(check=False):
                self._closed = True
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._close_all, limiter=self._limiter)

    def _close_all(self) -> None:
        try:
            if self._host_locks is not None:
                self._host_locks.close()
        finally:
            self._store.close()
