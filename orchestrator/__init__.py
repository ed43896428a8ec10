"""edis-fleet: reinstall whole fleets of EDIS Global KVM VPSes safely.

The library API: what the ``edis-fleet`` commands do, as functions. ``validate`` is a plain
function (offline); ``plan``, ``apply``, ``resume``, ``retry_failed``, ``run_report``,
``runs``, ``init``, ``account_vps`` and ``account_images`` are coroutines (they talk to the API
or the journal): run them with ``asyncio.run``, or await them in your own event loop. Errors
come from ``orchestrator.errors`` (every one an ``EdisFleetError``), with secrets redacted;
a run that crashed once recorded (an internal error, a full disk, a lock lost) raises
``RunCrashed`` (its ``message()`` says what was sent and how to resume)::

    import asyncio
    import orchestrator
    from orchestrator import Confirmation, SelectionOptions

    checked = orchestrator.validate("fleet.yaml", selection=SelectionOptions(only=("tag=web",)))
    outcome = asyncio.run(
        orchestrator.apply(
            "fleet.yaml",
            selection=SelectionOptions(only=("tag=web",)),
            confirm=Confirmation(count=len(checked.selected)),
        )
    )
    print(outcome.status, asyncio.run(orchestrator.run_report(outcome.run_id)))

Importing ``orchestrator`` is cheap: each name loads its modules on first use. (The report
function is ``run_report``: ``orchestrator.report`` is the package of report formats.)
"""

from typing import TYPE_CHECKING

from orchestrator.lazy import lazy_exports
from orchestrator.version import __version__

if TYPE_CHECKING:
    from orchestrator.errors import (
        EdisFleetError,
        JournalError,
        LockedError,
        ManifestError,
        PreflightError,
        UsageError,
    )
    from orchestrator.run.account import AccountVps, ImageList, account_images, account_vps
    from orchestrator.run.boundary import RunCrashed
    from orchestrator.run.execute import RunOutcome
    from orchestrator.run.library import (
        PlanCheck,
        Validation,
        apply,
        plan,
        resume,
        retry_failed,
        run_report,
        runs,
        validate,
    )
    from orchestrator.run.options import (
        AccountOptions,
        Confirmation,
        Endpoint,
        ReportFormat,
        SelectionOptions,
    )
    from orchestrator.run.plan import Plan
    from orchestrator.run.starter import InitResult, init

__all__ = [
    "AccountOptions",
    "AccountVps",
    "Confirmation",
    "EdisFleetError",
    "Endpoint",
    "ImageList",
    "InitResult",
    "JournalError",
    "LockedError",
    "ManifestError",
    "Plan",
    "PlanCheck",
    "PreflightError",
    "ReportFormat",
    "RunCrashed",
    "RunOutcome",
    "SelectionOptions",
    "UsageError",
    "Validation",
    "__version__",
    "account_images",
    "account_vps",
    "apply",
    "init",
    "plan",
    "resume",
    "retry_failed",
    "run_report",
    "runs",
    "validate",
]

_LIBRARY = "orchestrator.run.library"
_OPTIONS = "orchestrator.run.options"
_ERRORS = "orchestrator.errors"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "validate": _LIBRARY,
        "plan": _LIBRARY,
        "apply": _LIBRARY,
        "resume": _LIBRARY,
        "retry_failed": _LIBRARY,
        "run_report": _LIBRARY,
        "runs": _LIBRARY,
        "Validation": _LIBRARY,
        "PlanCheck": _LIBRARY,
        "AccountOptions": _OPTIONS,
        "Confirmation": _OPTIONS,
        "Endpoint": _OPTIONS,
        "ReportFormat": _OPTIONS,
        "SelectionOptions": _OPTIONS,
        "RunOutcome": "orchestrator.run.execute",
        "RunCrashed": "orchestrator.run.boundary",
        "account_vps": "orchestrator.run.account",
        "account_images": "orchestrator.run.account",
        "AccountVps": "orchestrator.run.account",
        "ImageList": "orchestrator.run.account",
        "init": "orchestrator.run.starter",
        "InitResult": "orchestrator.run.starter",
        "Plan": "orchestrator.run.plan",
        "EdisFleetError": _ERRORS,
        "JournalError": _ERRORS,
        "LockedError": _ERRORS,
        "ManifestError": _ERRORS,
        "PreflightError": _ERRORS,
        "UsageError": _ERRORS,
    },
)
