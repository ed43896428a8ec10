"""The run's error boundary: what an error that tears a recorded run down becomes.

``execute`` wraps everything after the run exists in the journal. An error raised there —
from the scheduler, the journal's flusher or heartbeat, the progress view; often wrapped in
an ``ExceptionGroup`` by an anyio task group — is mapped here:

- credentials refused mid-run (every leaf an ``AuthenticationError``): the run is recorded
  ``aborted`` with the error and the ``AuthenticationError`` is raised (exit 3);
- anything else is a fault of this machine (a journal that cannot be written: full disk,
  read-only file; a lock taken over by another process) or an internal error: the run is
  recorded ``crashed`` with the error's text (redacted), the VPSes whose POST was cut off are
  recorded in doubt (the scheduler does that, as for a second signal), and ``RunCrashed``
  is raised (exit 70) saying what was sent, which VPSes are in doubt and how to resume.

Nothing was ever sent without a durable intent: the journal writes the intent before the
POST leaves, so a journal that stops taking writes stops the sending too.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from orchestrator.errors import AuthenticationError, EdisFleetError, JournalError, LockedError
from orchestrator.journal import Journal, JournalConfig, RunStatus, TargetRecord
from orchestrator.journal.location import DEFAULT_JOURNAL
from orchestrator.model import TargetState


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, exception groups flattened (``exc`` itself otherwise)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def fault_of(exc: BaseException) -> str:
    """Say in words what kind of failure ``exc`` is: a fault of this machine, or internal."""
    found = leaves(exc)
    if any(isinstance(e, LockedError) or _lock_refused(e) for e in found):
        return "a lock of this run was taken over by another process"
    if any(_disk_full(e) for e in found):
        return "the disk of the journal is full"
    if any(isinstance(e, JournalError) for e in found):
        return "the journal could not be written"
    return "internal error"


def _lock_refused(exc: BaseException) -> bool:
    # The journal refused an intent because another process holds the VPS's lock now (the
    # send was not made): the same fault as a takeover the heartbeat saw.
    return isinstance(exc, JournalError) and "not by this process" in str(exc)


def _disk_full(exc: BaseException) -> bool:
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, OSError) and chain.errno == errno.ENOSPC:
            return True
        if isinstance(chain, sqlite3.Error | JournalError) and "disk is full" in str(chain):
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def error_text(exc: BaseException) -> str:
    """One line naming the error(s) inside ``exc`` (not redacted: the caller does that)."""
    parts = []
    for e in leaves(exc)[:3]:
        text = " ".join(str(e).split())
        parts.append(f"{type(e).__name__}: {text}" if text else type(e).__name__)
    more = len(leaves(exc)) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def resume_command(run_id: str, journal: JournalConfig) -> str:
    """The exact command that resumes ``run_id`` from ``journal``."""
    where = "" if journal.location == str(DEFAULT_JOURNAL) else f" --journal {journal.shown}"
    return f"edis-fleet resume {run_id}{where}"


@dataclass
class RunCrashed(EdisFleetError):
    """A recorded run stopped on an error or a fault of this machine (exit 70, resumable).

    ``cause`` is the original exception (its traceback is shown with ``--debug``),
    ``recorded`` whether the journal took the ``crashed`` status, ``targets`` the run's
    records as the journal has them (empty when it could not be read).
    """

    run_id: str
    cause: BaseException
    fault: str
    error: str
    recorded: bool
    resume: str
    targets: list[TargetRecord] = field(default_factory=list)

    def __str__(self) -> str:
        return f"run {self.run_id} crashed: {self.fault}: {self.error}"

    def message(self, redact: Callable[[str], str]) -> str:
        """What the operator reads: the fault, what was sent, what is in doubt, how to resume."""
        lines = [f"run {self.run_id} stopped: {self.fault}.", f"  error: {redact(self.error)}"]
        if self.targets:
            states = [t.state for t in self.targets]
            sent = sum(s in (TargetState.ACCEPTED, TargetState.READY) for s in states)
            doubt = [
                t for t in self.targets if t.state in (TargetState.IN_DOUBT, TargetState.INTENT)
            ]
            lines.append(
                f"  already sent and accepted: {sent} of {len(states)} VPS(es) "
                f"({states.count(TargetState.READY)} ready)"
            )
            if doubt:
                shown = ", ".join(f"{t.kvm_id} ({t.hostname})" for t in doubt[:10])
                extra = f" and {len(doubt) - 10} more" if len(doubt) > 10 else ""
                lines.append(f"  in doubt (their reinstall may have run): {shown}{extra}")
            else:
                lines.append("  in doubt: none")
        else:
            lines.append("  the journal could not be read: see `edis-fleet status` once it can")
        lines.append("  nothing was sent without a durable intent in the journal.")
        if not self.recorded:
            lines.append("  the journal could not record the crash; the run reads as running.")
        lines.append(f"  resume with: {self.resume}")
        return "\n".join(lines) + "\n"


async def close_down(
    journal: Journal,
    run_id: str,
    exc: Exception,
    *,
    config: JournalConfig,
    redact: Callable[[str], str],
) -> BaseException:
    """Record how ``exc`` ended run ``run_id`` and return the exception to raise instead
    (``AuthenticationError`` or ``RunCrashed``; see the module docstring). Never raises:
    a journal that cannot be written is said in the message."""
    found = leaves(exc)
    auth = [e for e in found if isinstance(e, AuthenticationError)]
    text = redact(error_text(exc))
    if auth and len(auth) == len(found):
        status, result = RunStatus.ABORTED, auth[0]
    else:
        status, result = RunStatus.CRASHED, None
    recorded = True
    with anyio.CancelScope(shield=True):
        try:
            await journal.finish_run(run_id, status, error=text)
        except Exception:  # the journal is the part that failed: say so
            recorded = False
        try:
            targets = await journal.targets(run_id, flush=False)
        except Exception:
            targets = []
    if result is not None:
        return result
    return RunCrashed(
        run_id=run_id,
        cause=exc,
        fault=fault_of(exc),
        error=text,
        recorded=recorded,
        resume=resume_command(run_id, config),
        targets=targets,
    )
