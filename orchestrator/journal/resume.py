"""Resume's view of a run: its targets sorted by what a resumed run must do with each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.journal.records import TargetRecord
from orchestrator.model import TargetState


@dataclass(frozen=True)
class ResumeClassification:
    """A run's targets sorted by what resume must do with them (each in wave order).

    - ``ready``, ``accepted``: the reinstall was accepted — never send again (``accepted``
      ones may still need a readiness check).
    - ``pending``: never sent, or known not sent — continue.
    - ``unresolved``: an intent without an outcome: the POST may or may not have left. In
      doubt; apply the run's in-doubt policy.
    - ``in_doubt``, ``failed``, ``skipped``: as recorded.
    """

    ready: tuple[str, ...]
    accepted: tuple[str, ...]
    pending: tuple[str, ...]
    unresolved: tuple[str, ...]
    in_doubt: tuple[str, ...]
    failed: tuple[str, ...]
    skipped: tuple[str, ...]

    @property
    def never_send(self) -> tuple[str, ...]:
        """VPSes whose reinstall was accepted: ``ready`` + ``accepted``."""
        return self.ready + self.accepted

    @property
    def all_in_doubt(self) -> tuple[str, ...]:
        """``unresolved`` + ``in_doubt``: every VPS whose reinstall may or may not have run."""
        return self.unresolved + self.in_doubt


def classify_targets(targets: Sequence[TargetRecord]) -> ResumeClassification:
    """Sort ``targets`` into a ``ResumeClassification`` (in wave, position order)."""
    groups: dict[TargetState, list[str]] = {s: [] for s in TargetState}
    for t in sorted(targets, key=lambda t: (t.wave, t.position, t.kvm_id)):
        groups[t.state].append(t.kvm_id)
    return ResumeClassification(
        ready=tuple(groups[TargetState.READY]),
        accepted=tuple(groups[TargetState.ACCEPTED]),
        pending=tuple(groups[TargetState.PENDING]),
        unresolved=tuple(groups[TargetState.INTENT]),
        in_doubt=tuple(groups[TargetState.IN_DOUBT]),
        failed=tuple(groups[TargetState.FAILED]),
        skipped=tuple(groups[TargetState.SKIPPED]),
    )
