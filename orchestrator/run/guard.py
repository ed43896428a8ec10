"""The guard before wiping: a large run, or one with protected VPSes, needs a say-so."""

from __future__ import annotations

from enum import Enum

from orchestrator.run.options import GUARD_LIMIT, Confirmation
from orchestrator.run.plan import Plan


class Verdict(Enum):
    """What the guard says about a plan and a confirmation."""

    GO = "go"
    # --confirm-count was given and is not the blast radius: refuse.
    MISMATCH = "mismatch"
    # Large or protected and not confirmed: ask a person, or refuse when nobody can be asked.
    ASK = "ask"


def check_confirmation(plan: Plan, confirm: Confirmation) -> Verdict:
    """Return whether the run may go ahead: more than ``GUARD_LIMIT`` VPSes, or any
    protected one, needs ``confirm.yes`` or ``confirm.count`` equal to the blast radius."""
    radius = plan.blast_radius
    if confirm.count is not None and confirm.count != radius:
        return Verdict.MISMATCH
    if radius <= GUARD_LIMIT and not plan.protected:
        return Verdict.GO
    if confirm.yes or confirm.count == radius:
        return Verdict.GO
    return Verdict.ASK


def why_confirm(plan: Plan) -> str:
    """Return why a plan needs a confirmation (how many it wipes, how many protected)."""
    return f"this run would wipe {plan.blast_radius} VPS(es)" + (
        f", {plan.protected} of them protected" if plan.protected else ""
    )
