"""The journal's side of ``model.EventSink``: the scheduler's events, written to one run.

``JournalSink`` is what the scheduler sees of the journal: it turns ``before_send`` into a
durable intent (``Journal.write_intents``) and each ``TargetEvent`` into a buffered outcome
(``Journal.enqueue_outcome``), recording "previous attempt not sent" where the journal's rule
"no intent over an unresolved intent" needs it. The journal itself (``journal.py``)
knows nothing of sinks or events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.journal.journal import Journal
from orchestrator.model import EventSink, TargetEvent, TargetState

__all__ = ["JournalSink"]


class JournalSink:
    """The journal's side of ``model.EventSink`` for one run.

    ``before_send`` returns once the intent is durable; ``emit`` buffers the outcome and never
    blocks (run ``journal.run_flusher()`` beside the scheduler so buffered outcomes are
    committed within ``max_delay``; an outcome lost in a crash reads as in doubt). ``pending``
    and ``intent`` events write nothing: ``before_send`` wrote the intent.

    The scheduler calls ``before_send`` again for a VPS only when its retry policy found the
    previous attempt not sent, or after it emitted ``in_doubt`` (resend after the install
    window). In the first case — and for a ``skipped`` that follows an attempt not sent — the
    sink records ``pending`` ("previous attempt not sent") first, in the same transaction as
    what follows, so the journal's rule "no intent over an unresolved intent" still holds.
    ``before_send`` raises ``JournalError`` when the journal refuses the intent: do not send.
    """

    NOT_SENT = "previous attempt not sent"

    def __init__(self, journal: Journal, run_id: str) -> None:
        self.journal = journal
        self.run_id = run_id
        self._last: dict[str, TargetState] = {}

    async def before_send(self, kvm_id: str, wave: int) -> None:
        """Make the intent for ``kvm_id`` durable (``wave`` is not needed: the target row has
        it). Raises ``JournalError`` when refused or when the commit fails."""
        last = self._last.get(kvm_id)
        if last is TargetState.INTENT:
            self.journal.enqueue_outcome(
                self.run_id, kvm_id, TargetState.PENDING, reason=self.NOT_SENT
            )
        # A send after ``in_doubt`` is the in-doubt resend: the journal allows one per run.
        resend = last is TargetState.IN_DOUBT
        await self.journal.write_intents(self.run_id, [kvm_id], resend=resend)
        self._last[kvm_id] = TargetState.INTENT

    def emit(self, event: TargetEvent) -> None:
        """Buffer the state change of ``event`` (never blocks)."""
        if event.presend_key is not None or event.proof or event.known_hosts:
            # Facts, not states: a pre-send key rides on the ``pending`` event before the
            # intent and is committed in the intent's transaction (facts precede intents).
            self.journal.enqueue_host_facts(
                self.run_id,
                event.kvm_id,
                presend_key=event.presend_key,
                proof=event.proof or None,
                known_hosts=event.known_hosts or None,
            )
        if event.state is TargetState.PENDING and self._last.get(event.kvm_id) is (
            TargetState.INTENT
        ):
            # The attempt under that intent was not processed (not sent, throttled): record
            # it now, so a crash during the backoff does not leave the VPS looking in doubt.
            self.journal.enqueue_outcome(
                self.run_id, event.kvm_id, TargetState.PENDING, reason=self.NOT_SENT, at=event.at
            )
            self._last[event.kvm_id] = TargetState.PENDING
            return
        if event.state in (TargetState.PENDING, TargetState.INTENT):
            return
        if (
            event.state is TargetState.SKIPPED
            and self._last.get(event.kvm_id) is TargetState.INTENT
        ):
            self.journal.enqueue_outcome(
                self.run_id, event.kvm_id, TargetState.PENDING, reason=self.NOT_SENT, at=event.at
            )
        self.journal.enqueue_outcome(
            self.run_id, event.kvm_id, event.state, reason=event.reason, at=event.at
        )
        if event.state is TargetState.IN_DOUBT and event.resend:
            self.journal.enqueue_resend_decision(self.run_id, event.kvm_id, at=event.at)
        self._last[event.kvm_id] = event.state


if TYPE_CHECKING:

    def _sink_fits(sink: JournalSink) -> EventSink:
        return sink  # mypy proves that JournalSink is an EventSink
