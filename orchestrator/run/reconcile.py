"""In-doubt sends resolved by proof (``rollout.in_doubt: reconcile``).

A ``set/reinstall`` whose answer was lost may or may not have been acted on, and resending it
blindly may wipe a freshly installed VPS a second time. With readiness mode ``ssh`` the VPS
itself can say which: for the install window after the send, look at the host key it presents.

- It presents this run's host key (or, for ``#!`` user data, a key other than the one scanned
  just before the send): the reinstall happened. It is *accepted*, and cloud-init decides
  whether it is ready.
- It still presents the pre-send key and was never seen down: the send was not acted on. It is
  *resent* once, with a new durable intent (the decision is a journal fact: a resumed run never
  sends a second time).
- Anything else (unreachable, a key that is neither, down and back with the old key, no key
  recorded before the send): it stays *in doubt*, with what was observed.

The pre-send key is a journal fact (``targets.presend_key``, committed with the intent), so a
resumed run reconciles the in-doubt sends it finds exactly as the live run would have.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.run.proof import Observation, ProofSpec, Prover

# What each reason starts with, so reports and tests can tell the resolutions apart.
RESOLVED_ACCEPTED = "in doubt, resolved by proof"
RESOLVED_RESEND = "in doubt, resolved as not acted on"
UNRESOLVED = "still in doubt after the install window"


class Resolution(enum.StrEnum):
    """How an in-doubt send was resolved."""

    ACCEPTED = "accepted"
    RESEND = "resend"
    UNRESOLVED = "unresolved"


@dataclass(frozen=True)
class Verdict:
    """A resolution and the sentence that explains it."""

    resolution: Resolution
    reason: str


async def reconcile(
    prover: Prover,
    kvm_id: str,
    spec: ProofSpec,
    host: str | None,
    port: int,
    *,
    window_s: float,
    may_resend: bool = True,
) -> Verdict:
    """Look at ``kvm_id`` for up to ``window_s`` seconds and resolve its in-doubt send.

    Returns as soon as the reinstall is proven; otherwise at the end of the window. With
    ``may_resend`` false (its one resend was already sent) a "not acted on" verdict stays in
    doubt. Never raises for network trouble.
    """
    if host is None:
        return Verdict(Resolution.UNRESOLVED, f"{UNRESOLVED}: no IP address known to look at")
    proven = await prover.prove(kvm_id, spec, host, port, max(0.0, window_s))
    if proven is not None:
        return Verdict(Resolution.ACCEPTED, f"{RESOLVED_ACCEPTED} ({proven})")
    seen = prover.observed.get(kvm_id, Observation())
    if _untouched(seen):
        if not may_resend:
            return Verdict(
                Resolution.UNRESOLVED,
                f"{UNRESOLVED}: it still presents the pre-send host key, but its one resend "
                "was already sent (never a second)",
            )
        return Verdict(
            Resolution.RESEND,
            f"{RESOLVED_RESEND}: after {window_s:g} s it still presents the pre-send host key "
            "and was never seen down; resent once",
        )
    return Verdict(Resolution.UNRESOLVED, f"{UNRESOLVED}: {describe(seen)}")


def _untouched(seen: Observation) -> bool:
    """The VPS presented its pre-send key all along (never down, never another key)."""
    if seen.pre_key is None or seen.last_key is None or seen.seen_down:
        return False
    return seen.pre_key.split()[:2] == seen.last_key.split()[:2]


def describe(seen: Observation) -> str:
    """What was observed of a VPS, in one phrase."""
    if seen.pre_key is None:
        head = "no host key was recorded before the send"
    else:
        head = "the pre-send host key was recorded"
    if seen.last_key is None:
        return f"{head}; its SSH server never answered"
    same = seen.pre_key is not None and seen.pre_key.split()[:2] == seen.last_key.split()[:2]
    now = "the pre-send key" if same else "another key than expected"
    down = "after being seen down" if seen.seen_down else "never seen down"
    return f"{head}; it presents {now}, {down}"


COUNTER_NAMES = {
    Resolution.ACCEPTED: "in_doubt_proven_accepted",
    Resolution.RESEND: "in_doubt_resent_once",
    Resolution.UNRESOLVED: "in_doubt_unresolved",
}


def counters(tally: Mapping[Resolution, int]) -> dict[str, int]:
    """The run counters (journal, reports) of how in-doubt sends were resolved; none when no
    send was reconciled."""
    if not any(tally.values()):
        return {}
    return {COUNTER_NAMES[r]: tally.get(r, 0) for r in Resolution}
