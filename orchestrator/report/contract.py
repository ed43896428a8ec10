"""The run's contract in one place: counts, verdict, status and exit code, from the journal.

Every command that states how a run ended — ``apply``, ``resume`` and ``retry-failed`` (their
exit code and the status they record), ``runs``, ``status``, ``report`` and the JSON report
(``verdict``, ``exit_code``) — calls ``judge`` on the run's records as the journal holds them:
the *whole* run, never only what one invocation touched.

The table (also in ``--help`` and the README):

====  ==============  ===========  ===================================================
code  verdict         status       meaning
====  ==============  ===========  ===================================================
0     ok              done         every selected VPS ready
1     failed          failed       run completed, some VPSes failed
2     (refused)       —            refused before anything was sent (usage, manifest,
                                   pre-flight, stale plan, plan for another endpoint)
3     (credentials)   aborted      credentials refused
4     in-doubt        in_doubt     VPSes remain in doubt (their reinstall may have run)
5     aborted         aborted      aborted by a failure budget
6     busy            busy         another run holds some of these VPSes; nothing sent
7     rto-missed      rto_missed   completed, but over the RTO target
70    crashed         crashed      internal error or a fault of this machine (disk full,
                                   journal unwritable, lock lost); resumable
130   interrupted     interrupted  interrupted; resumable
====  ==============  ===========  ===================================================

Precedence when several apply: 70 > 4 > 130 > 5 > 1 > 7 > 0. In doubt is never hidden by
anything milder: a run with failed *and* in-doubt VPSes exits 4; an interrupted run with a VPS
in doubt exits 4 too (resume it, then check the in-doubt ones). Codes 2 and 3 come from
refusals before a run is recorded, or from the credentials being refused mid-run, and are
decided by the command line, not by this table of recorded runs. A run refused because another
run holds some of its VPSes is recorded ``busy`` and judged 6 whenever it is read (nothing was
sent, so nothing graver can apply; its VPSes stay pending: resume runs it once they are free).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orchestrator.journal import RunStatus, TargetRecord
from orchestrator.model import TargetState

OK = 0
FAILED = 1
REFUSED = 2
CREDENTIALS = 3
IN_DOUBT = 4
ABORTED = 5
BUSY = 6
RTO_MISSED = 7
CRASHED = 70
INTERRUPTED = 130


class Verdict(enum.StrEnum):
    """What a run amounts to, for people and CI (the JSON report's ``verdict``)."""

    OK = "ok"
    FAILED = "failed"
    IN_DOUBT = "in-doubt"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"
    RUNNING = "running"
    RTO_MISSED = "rto-missed"
    CRASHED = "crashed"
    BUSY = "busy"


EXIT_CODES: dict[Verdict, int | None] = {
    Verdict.OK: OK,
    Verdict.FAILED: FAILED,
    Verdict.IN_DOUBT: IN_DOUBT,
    Verdict.ABORTED: ABORTED,
    Verdict.INTERRUPTED: INTERRUPTED,
    Verdict.RTO_MISSED: RTO_MISSED,
    Verdict.CRASHED: CRASHED,
    Verdict.BUSY: BUSY,
    # A run still recorded running has no exit code yet (or was killed: resume it).
    Verdict.RUNNING: None,
}
STATUS_OF: dict[Verdict, RunStatus] = {
    Verdict.OK: RunStatus.DONE,
    Verdict.FAILED: RunStatus.FAILED,
    Verdict.IN_DOUBT: RunStatus.IN_DOUBT,
    Verdict.ABORTED: RunStatus.ABORTED,
    Verdict.INTERRUPTED: RunStatus.INTERRUPTED,
    Verdict.RTO_MISSED: RunStatus.RTO_MISSED,
    Verdict.CRASHED: RunStatus.CRASHED,
    Verdict.BUSY: RunStatus.BUSY,
    Verdict.RUNNING: RunStatus.RUNNING,
}
# Gravest first: 70 > 4 > 130 > 5 > 1 > 7 > 0.
PRECEDENCE = (
    Verdict.CRASHED,
    Verdict.IN_DOUBT,
    Verdict.INTERRUPTED,
    Verdict.ABORTED,
    Verdict.BUSY,
    Verdict.FAILED,
    Verdict.RTO_MISSED,
    Verdict.OK,
)
_FROM_STATUS = {status: verdict for verdict, status in STATUS_OF.items()}
# States that mean "this VPS's reinstall may or may not have run": an intent without an
# outcome counts once the run is no longer running.
_DOUBT = (TargetState.IN_DOUBT, TargetState.INTENT)
# States a completed run should not have left: work remains, so it reads as interrupted.
_LEFT = (TargetState.PENDING, TargetState.ACCEPTED, TargetState.SKIPPED)


@dataclass(frozen=True)
class Tally:
    """A run judged from its records: the count of VPSes per state, the verdict, the status
    the journal records for it and the process exit code (None while it runs)."""

    counts: Mapping[TargetState, int]
    verdict: Verdict
    status: RunStatus
    exit_code: int | None

    def count(self, *states: TargetState) -> int:
        """How many VPSes are in any of ``states``."""
        return sum(self.counts.get(s, 0) for s in states)

    @property
    def in_doubt(self) -> int:
        """VPSes whose reinstall may have run (in doubt, or an intent without an outcome)."""
        return self.count(*_DOUBT)


def judge(
    status: RunStatus, states: Iterable[TargetState], *, rto_met: bool | None = None
) -> Tally:
    """Judge a run: ``status`` is how it stopped as recorded (``done`` or any final status
    for a run that completed; ``aborted``, ``interrupted``, ``crashed`` or ``running``),
    ``states`` the state of each of its VPSes, ``rto_met`` whether its recovery met the RTO
    (None: no RTO, or not judged). Applies the precedence of the module docstring. Pure."""
    counts = Counter(states)
    if status is RunStatus.RUNNING:
        # Still running (or killed without a word: resume it); its doubts are not final yet.
        return Tally(dict(counts), Verdict.RUNNING, RunStatus.RUNNING, None)
    # The recorded status is a floor (a run recorded failed stays at least failed); what the
    # VPSes' states show can only make the verdict graver.
    found = {_FROM_STATUS[status]}
    if counts[TargetState.IN_DOUBT] + counts[TargetState.INTENT]:
        found.add(Verdict.IN_DOUBT)
    if status not in (RunStatus.ABORTED, RunStatus.BUSY) and any(counts[s] for s in _LEFT):
        # Work is left (an older version's record of a completed run): resumable.
        found.add(Verdict.INTERRUPTED)
    if counts[TargetState.FAILED]:
        found.add(Verdict.FAILED)
    if rto_met is False:
        found.add(Verdict.RTO_MISSED)
    verdict = min(found, key=PRECEDENCE.index)
    return Tally(dict(counts), verdict, STATUS_OF[verdict], EXIT_CODES[verdict])


def judge_records(
    status: RunStatus, targets: Iterable[TargetRecord], *, rto_met: bool | None = None
) -> Tally:
    """``judge`` over journal target records."""
    return judge(status, (t.state for t in targets), rto_met=rto_met)
