"""Named fault profiles: ready-made rule sets for tests, demos and drills.

=============  ===============================================================================
``healthy``    no faults
``flaky``      some 5xx, dropped connections, rare 429 bursts, a little latency
``throttled``  frequent 429s, half of them with ``Retry-After``, and 429 bursts
``expiring``   signatures live at most 90 s, and 1% of requests revoke every session
``chaos``      all of the above plus lost responses, and installs that fail or hang
=============  ===============================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.simulator.faults import ANY_ENDPOINT, FaultRules


@dataclass(frozen=True)
class Profile:
    """A named set of rules, and an optional cap on the signature lifetime."""

    rules: Mapping[str, FaultRules]
    max_signature_lifetime: float | None = None


_FLAKY = {"http500": 0.01, "http502": 0.01, "http503": 0.02, "http504": 0.01, "drop": 0.01}
_THROTTLED = {"throttle": 0.08, "throttle_retry_after": 0.08, "throttle_burst": 0.01}
_CHAOS = {
    **_FLAKY,
    "throttle": 0.04,
    "throttle_retry_after": 0.04,
    "throttle_burst": 0.01,
    "invalidate_sessions": 0.01,
    "lost_response": 0.01,
}
PROFILES: Mapping[str, Profile] = {
    "healthy": Profile({}),
    "flaky": Profile(
        {
            ANY_ENDPOINT: FaultRules(
                rates={**_FLAKY, "throttle_burst": 0.005},
                latency_rate=0.05,
                latency=(0.005, 0.05),
            )
        }
    ),
    "throttled": Profile(
        {ANY_ENDPOINT: FaultRules(rates=_THROTTLED, retry_after=(1, 3), burst=(5, 15))}
    ),
    "expiring": Profile(
        {ANY_ENDPOINT: FaultRules(rates={"invalidate_sessions": 0.01})},
        max_signature_lifetime=90.0,
    ),
    "chaos": Profile(
        {
            ANY_ENDPOINT: FaultRules(rates=_CHAOS, latency_rate=0.05, latency=(0.005, 0.05)),
            "set/reinstall": FaultRules(
                rates={**_CHAOS, "install_fail": 0.02, "install_hang": 0.01},
                latency_rate=0.05,
                latency=(0.005, 0.05),
            ),
        },
        max_signature_lifetime=90.0,
    ),
}


def get_profile(name: str) -> Profile:
    """Return the profile ``name``; raises ``ValueError`` for an unknown one."""
    profile = PROFILES.get(name)
    if profile is None:
        raise ValueError(f"unknown fault profile {name!r} (known: {', '.join(PROFILES)})")
    return profile
