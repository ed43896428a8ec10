"""One run as a library call: pre-flight, the plan, the scheduler (waves, budgets, drain), rate
limits, the retry policy, readiness, and ``execute`` which wires them to the journal."""

from orchestrator.run.execute import RunOutcome, RunSpec, execute
from orchestrator.run.plan import Plan, build_plan, manifest_sha256
from orchestrator.run.preflight import Check, PreflightReport, preflight
from orchestrator.run.spec import ResumePoint, build_spec
from orchestrator.run.stats import RunStats

__all__ = [
    "Check",
    "Plan",
    "PreflightReport",
    "ResumePoint",
    "RunOutcome",
    "RunSpec",
    "RunStats",
    "build_plan",
    "build_spec",
    "execute",
    "manifest_sha256",
    "preflight",
]
