"""What a run is made of: the jobs (one per VPS), the waves, the run's settings, and the
result the scheduler returns (``run/scheduler.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.fleet import InDoubtPolicy, ReadinessMode
from orchestrator.model import TargetState
from orchestrator.run.proof import ProofSpec
from orchestrator.run.retry import RetryPolicy
from orchestrator.secrets import Secret


@dataclass(frozen=True)
class Job:
    """One VPS to reinstall, with everything its flow needs (secrets stay ``Secret``)."""

    kvm_id: str
    wave: int
    image: str
    password: Secret
    user_data: Secret | None
    readiness: ReadinessMode
    port: int
    deadline_s: float
    min_install_s: float
    install_window_s: float
    poll_interval_s: float = 15.0
    vps_deadline_s: float | None = None
    # Resume: the reinstall was accepted before the crash (only readiness is left), or an
    # intent was written and no outcome (in doubt since that wall-clock time).
    accepted_already: bool = False
    in_doubt_since: float | None = None
    # Readiness mode ssh: what proves this VPS's reinstall (run/proof.py).
    proof: ProofSpec | None = None
    # Resume: when the reinstall was accepted (wall clock; readiness deadlines count from
    # it), and whether this run already sent its one in-doubt resend (never a second).
    accepted_at: float | None = None
    resend_spent: bool = False
    # Resume, readiness mode ssh: the host key the journal recorded just before the send
    # (``""``: nothing answered; None: none recorded), so reconciliation decides as live.
    presend_key: str | None = None


@dataclass(frozen=True)
class WaveSpec:
    """One wave's jobs and its failure budget."""

    index: int
    jobs: tuple[Job, ...]
    budget: int


@dataclass(frozen=True)
class RunSettings:
    """How the run behaves beyond the per-VPS facts."""

    run_budget: int
    soak_s: float = 0.0
    in_doubt: InDoubtPolicy = InDoubtPolicy.REPORT
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass
class RunResult:
    """How a run ended: the final state of every VPS, and why the run stopped early if it did."""

    states: dict[str, TargetState] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    aborted: str | None = None
    interrupted: bool = False

    def count(self, state: TargetState) -> int:
        """How many VPSes ended in ``state``."""
        return sum(1 for s in self.states.values() if s is state)
