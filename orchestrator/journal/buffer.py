"""The journal's buffered writes and their group commit, shared by both backends.

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
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel

from orchestrator.errors import JournalError
from orchestrator.journal.batch import Batch, IntentRequest
from orchestrator.journal.schema import OUTCOME_FROM
from orchestrator.journal.store import Store
from orchestrator.model import Attempt, Clock, TargetState

if TYPE_CHECKING:
    from orchestrator.journal.pg_store import PgStore

T = TypeVar("T")


def unique_ids(kvm_ids: Iterable[str]) -> tuple[str, ...]:
    """Return ``kvm_ids`` as a tuple; raise ``ValueError`` when one is repeated."""
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


class BufferedWrites:
    """The write side of ``journal.Journal``: one connection held by one call at a time, a
    batch of writes committed by whichever caller needs it first (see the module docstring).

    ``store`` is the backend; ``path`` names it in errors; ``clock`` gives timestamps and the
    age of buffered rows; ``redactor`` filters every server message and reason;
    ``max_buffered`` and ``max_delay`` bound how many non-durable rows may wait for a commit,
    and for how long.
    """

    def __init__(
        self,
        store: Store | PgStore,
        *,
        path: Path | str,
        clock: Clock,
        redactor: Callable[[str], str],
        max_buffered: int,
        max_delay: float,
    ) -> None:
        self._store = store
        #: The SQLite file, or the URL of a PostgreSQL journal with its password as ``***``.
        self.path = path
        self._clock = clock
        self._redact = redactor
        self._max_buffered = max_buffered
        self._max_delay = max_delay
        # Set while a call runs on the connection; the others wait for it (see ``_hold``).
        self._busy: anyio.Event | None = None
        # Our own thread slot: a thread pool busy with other work never delays a commit.
        self._limiter = anyio.CapacityLimiter(1)
        self._batch = Batch()
        self._ticket = _Ticket()
        self._oldest: float | None = None
        self._closed = False

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

    # ----------------------------------------------------------------- writing

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
        ids = unique_ids(kvm_ids)
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
