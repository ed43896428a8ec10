"""The writes of a journal batch, as both backends take them, and the checks they share.

The ``Journal`` gathers these writes between commits; ``sqlite_batch.py`` and ``pg_batch.py``
commit a ``Batch`` in one transaction. ``intent_problem`` (with ``state_problem``) says why an
intent may not be written, ``note_misfit`` records an outcome that did not fit, and
``progress_columns`` picks the run columns progress may set, the same in both backends;
``new_run_id`` draws a run's id.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import JournalError
from orchestrator.journal.records import known_value
from orchestrator.journal.schema import INTENT_FROM
from orchestrator.model import TargetState

_log = logging.getLogger("orchestrator.journal.journal")

RESENT_ONCE = "already resent once in this run; never resent twice"

# The target columns a fact may set (schema version 3): never built from input.
FACT_COLUMNS = frozenset({"presend_key", "proof", "known_hosts"})
# The run columns a batch's progress may set: never built from input.
PROGRESS_COLUMNS = frozenset(
    {"wave_position", "failures", "retries", "counters_json", "waves_json"}
)


@dataclass(eq=False)
class IntentRequest:
    """One ``write_intents`` call waiting in a batch (compared and hashed by identity)."""

    run_id: str
    kvm_ids: tuple[str, ...]
    at: float
    # The in-doubt resend after the install window: refused when the VPS was already resent
    # in this run, and recorded (``resent_at``) so no later process resends it again.
    resend: bool = False


@dataclass
class Batch:
    """Writes not yet committed, in the order they were asked for."""

    intents: list[IntentRequest] = field(default_factory=list)
    # (run_id, kvm_id, state, reason, at)
    outcomes: list[tuple[str, str, TargetState, str, float]] = field(default_factory=list)
    # (run_id, kvm_id, at, endpoint, outcome, http_status, message, seconds)
    attempts: list[tuple[str, str | None, float, str, str, int | None, str, float]] = field(
        default_factory=list
    )
    # run_id -> {column: value}; the latest value of a column wins.
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (at, run_id, kvm_id): resends decided by the in-doubt policy, written after the outcomes.
    resends: list[tuple[float, str, str]] = field(default_factory=list)
    # (run_id, kvm_id, column, value): facts about a VPS (schema version 3, ``FACT_COLUMNS``),
    # written before the intents, so a pre-send host key is as durable as its intent.
    facts: list[tuple[str, str, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.intents) + len(self.outcomes) + len(self.attempts) + len(self.progress)
            + len(self.resends) + len(self.facts)
        )  # fmt: skip

    def take_back(self, failed: Batch) -> None:
        """Put the rows of a ``failed`` batch (all but its intents) before this one's."""
        self.outcomes[:0] = failed.outcomes
        self.attempts[:0] = failed.attempts
        self.resends[:0] = failed.resends
        self.facts[:0] = failed.facts
        for run_id, fields in failed.progress.items():
            self.progress[run_id] = {**fields, **self.progress.get(run_id, {})}


def state_problem(run_id: str, kvm_id: str, state: Any) -> str:
    """Why an intent may not follow ``state`` (a target's state as read from the journal), or
    ``""`` when it may.

    A state this version does not know (a journal written by a newer version, or edited by
    hand) refuses the intent with the row reader's ``JournalError`` text: whether a send could
    repeat one is not guessed. A refusal, not a raise: the rest of the batch commits (the
    caller of ``write_intents`` gets the ``JournalError``).
    """
    try:
        known = known_value(TargetState, state, f"state in run {run_id}")
    except JournalError as exc:
        return f"{kvm_id}: {exc}"
    if known not in INTENT_FROM:
        return f"{kvm_id}: state is {known.value}; another send could repeat it"
    return ""


def intent_problem(
    run_id: str, kvm_id: str, state: Any, *, resent: bool, lock: Sequence[Any], held: bool
) -> str:
    """Why an intent of ``run_id`` for ``kvm_id`` may not be written, or ``""`` when it may.

    ``state`` is the target's state as read (None: not a target of the run), ``resent`` whether
    the request is a resend of a VPS already resent in this run, ``lock`` the VPS's lock row as
    ``(run, pid, host)`` (Nones when unlocked) and ``held`` whether that is this process's lock
    for the run. The same words in both backends.
    """
    if state is None:
        return f"{kvm_id}: not a target of run {run_id}"
    if resent:
        return f"{kvm_id}: {RESENT_ONCE}"
    if bad_state := state_problem(run_id, kvm_id, state):
        return bad_state
    if held:
        return ""
    run, pid, host = lock
    holder = "nobody" if run is None else f"run {run} (pid {pid} on {host})"
    return f"{kvm_id}: locked by {holder}, not by this process"


def progress_columns(fields: Iterable[str]) -> list[str]:
    """The columns of ``fields`` a batch's progress may set (``PROGRESS_COLUMNS``), in order."""
    return [c for c in fields if c in PROGRESS_COLUMNS]


def note_misfit(
    ignored: list[tuple[str, str, TargetState, str | None]],
    run_id: str,
    kvm_id: str,
    state: TargetState,
    found: str | None,
) -> None:
    """Record and log an outcome ``state`` that did not fit the target's state ``found``."""
    ignored.append((run_id, kvm_id, state, found))
    _log.warning("journal: outcome %s for %s not applied (state %s)", state, kvm_id, found)


def new_run_id(now: float) -> str:
    """Return a run id like ``20261127-2315-ab12cd``: UTC minute, then 6 random hex digits."""
    return time.strftime("%Y%m%d-%H%M", time.gmtime(now)) + "-" + secrets.token_hex(3)
