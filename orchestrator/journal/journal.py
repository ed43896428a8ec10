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
``schema.py``. This module is the facade: runs, targets, reads, locks and closing; the writes
that go through the batch and its group commit are in ``buffer.py`` (``BufferedWrites``, which
``Journal`` extends), resume's sorting of a run's targets in ``resume.py``.

How a run uses it (the cli wires it; the scheduler sees only ``JournalSink``, its
``model.EventSink``, from ``sink.py``)::

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

Safety nets beyond the intents: an intent is refused (``JournalError``) for a VPS that is not a
target of the run, whose reinstall was already accepted, that has an unresolved intent, or whose
lock this process does not hold — so a run whose stale lock was taken over cannot send.
Nothing secret is written: no passwords, signatures or user data (only its SHA-256); server
messages and reasons pass through the ``Redactor``; secret-looking option keys are masked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio

from orchestrator.clock import SystemClock
from orchestrator.errors import LockedError
from orchestrator.journal.buffer import BufferedWrites, unique_ids
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
from orchestrator.journal.store import Store
from orchestrator.model import Clock, TargetState

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
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class Journal(BufferedWrites):
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
        self._host_locks = host_locks
        me = os.getpid() if pid is None else pid
        host = hostname or config.hostname or socket.gethostname()
        store: Store | PgStore
        if config.is_url:
            # Imported here: psycopg is loaded only when a PostgreSQL journal is opened.
            from orchestrator.journal.pg_store import PgStore  # noqa: PLC0415

            conninfo, password = config.conninfo()
            store = PgStore(
                conninfo,
                shown=config.shown,
                secrets=[conninfo] + ([password.reveal()] if password else []),
                pid=me,
                hostname=host,
                busy_timeout=busy_timeout,
                stale_after=lock_stale_after,
            )
        else:
            store = Store(
                config.path,
                pid=me,
                hostname=host,
                busy_timeout=busy_timeout,
                stale_after=lock_stale_after,
            )
        super().__init__(
            store,
            path=config.shown if config.is_url else config.path,
            clock=clock or SystemClock(),
            redactor=redactor or str,
            max_buffered=max_buffered,
            max_delay=max_delay,
        )
        self._held: dict[str, set[str]] = {}

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
        """The schema version of the file (``schema.SCHEMA_VERSION`` once open)."""
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
        unique_ids(t.kvm_id for t in specs)
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
        ids = unique_ids(kvm_ids)
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
