"""One run as a library call: pre-flight, the plan, the scheduler (waves, budgets, drain), rate
limits, the retry policy, readiness, and ``execute`` which wires them to the journal.

Loading, planning and resuming live in ``load``, ``resume`` and ``spec``; typed options in
``options``. The names below load their modules on first use (``orchestrator.lazy``).
``execute`` and ``preflight`` share their module's name: import them from
``orchestrator.run.execute`` and ``orchestrator.run.preflight``.
"""

from typing import TYPE_CHECKING

from orchestrator.lazy import lazy_exports

if TYPE_CHECKING:
    from orchestrator.run.execute import RunOutcome, RunSpec
    from orchestrator.run.plan import Plan, build_plan, manifest_sha256
    from orchestrator.run.preflight import Check, PreflightReport
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
    "manifest_sha256",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "RunOutcome": "orchestrator.run.execute",
        "RunSpec": "orchestrator.run.execute",
        "Plan": "orchestrator.run.plan",
        "build_plan": "orchestrator.run.plan",
        "manifest_sha256": "orchestrator.run.plan",
        "Check": "orchestrator.run.preflight",
        "PreflightReport": "orchestrator.run.preflight",
        "ResumePoint": "orchestrator.run.spec",
        "build_spec": "orchestrator.run.spec",
        "RunStats": "orchestrator.run.stats",
    },
)
