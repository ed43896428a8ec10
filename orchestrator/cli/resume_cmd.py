"""``edis-fleet resume RUN_ID`` and ``edis-fleet retry-failed RUN_ID``.

resume continues a run that stopped (a crash, a kill, Ctrl-C, a tripped budget): VPSes whose
reinstall was accepted are never sent again (those not yet confirmed back get their readiness
check), VPSes never sent continue in their waves, and VPSes left with an intent and no outcome
are in doubt and follow the run's in-doubt policy. The failures already counted carry over
into the budgets. retry-failed starts a new run over the VPSes that *failed* in a run (never
the in-doubt ones: their reinstall may have run; check them, then select them with --limit).
Both refuse when the manifest or a rendered user-data document changed since the run, unless
``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from orchestrator.cli import exitcodes
from orchestrator.cli.args import (
    add_account_overrides,
    add_output_arguments,
    confirmation,
    count,
    endpoint,
    output_options,
)


def register(sub: Any) -> None:
    """Add ``resume`` and ``retry-failed``."""
    resume = sub.add_parser("resume", help="continue a run that stopped, sending nothing twice")
    _common(resume)
    resume.set_defaults(handler=resume_run)
    retry = sub.add_parser(
        "retry-failed",
        help="a new run over the VPSes that failed in RUN_ID (not the in-doubt)",
        description="Start a new run over the VPSes that failed in RUN_ID, as ONE wave (no "
        "canary: they had theirs). Its failure budget is the manifest's run budget "
        "(rollout.failure_budget.run) resolved over the retried VPSes: once more of them fail "
        "than it allows, nothing new is sent, sends in flight finish, the rest end skipped and "
        "the run exits 5. In-doubt VPSes are never retried: check them, then select them with "
        "apply --limit. Exit codes as apply (edis-fleet --help).",
    )
    _common(retry)
    retry.add_argument("--yes", action="store_true", help="do not ask before wiping")
    retry.add_argument("--confirm-count", type=count, metavar="N", help="confirm the count")
    retry.set_defaults(handler=retry_failed)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument(
        "--fleet",
        metavar="FLEET.yaml",
        help="the run's manifest, when it is elsewhere than where the run recorded it (another "
        "runner's checkout); its content must be unchanged",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="go ahead although the manifest or rendered user-data changed since the run",
    )
    add_account_overrides(p)
    add_output_arguments(p)


def resume_run(args: argparse.Namespace) -> int:
    """Continue ``args.run_id``; exit codes as ``apply``."""
    import anyio

    from orchestrator.cli.output import refuse
    from orchestrator.cli.running import build_and_run
    from orchestrator.errors import JournalError
    from orchestrator.run.load import Refusal
    from orchestrator.run.resume import read_run, reload_left, settle
    from orchestrator.run.spec import journal_config

    env = dict(os.environ)
    output = output_options(args)
    try:
        view = anyio.run(read_run, journal_config(output.journal, env), args.run_id)
    except JournalError as exc:
        sys.stderr.write(f"{exc}\n")
        return exitcodes.USAGE
    if not view.left:
        # Judged as a whole, like every run's exit code: a run that ended in doubt exits 4.
        try:
            tally = anyio.run(settle, journal_config(output.journal, env), view)
        except JournalError as exc:
            sys.stderr.write(f"{exc}\n")
            return exitcodes.USAGE
        sys.stdout.write(
            f"run {view.run.id} has nothing left to do ({tally.status.value}; "
            f"{tally.in_doubt} in doubt)\n"
        )
        return exitcodes.CRASHED if tally.exit_code is None else tally.exit_code
    reloaded = reload_left(view, env, endpoint=endpoint(args), force=args.force, fleet=args.fleet)
    if isinstance(reloaded, Refusal):
        return refuse(reloaded, sys.stderr)
    return build_and_run(
        reloaded.loaded,
        reloaded.plan,
        env,
        endpoint=reloaded.endpoint,
        output=output,
        resume=reloaded.resume,
    )


def retry_failed(args: argparse.Namespace) -> int:
    """Start a new run over the failed VPSes of ``args.run_id``; exit codes as ``apply``."""
    import anyio

    from orchestrator.cli.output import refuse
    from orchestrator.cli.running import build_and_run, guard
    from orchestrator.errors import JournalError
    from orchestrator.run.load import Refusal
    from orchestrator.run.resume import read_run, reload_failed
    from orchestrator.run.spec import journal_config

    env = dict(os.environ)
    output = output_options(args)
    try:
        view = anyio.run(read_run, journal_config(output.journal, env), args.run_id)
    except JournalError as exc:
        sys.stderr.write(f"{exc}\n")
        return exitcodes.USAGE
    if not view.classification.failed:
        sys.stdout.write(f"run {view.run.id} has no failed VPSes\n")
        return exitcodes.OK
    reloaded = reload_failed(view, env, endpoint=endpoint(args), force=args.force, fleet=args.fleet)
    if isinstance(reloaded, Refusal):
        return refuse(reloaded, sys.stderr)
    code = guard(reloaded.loaded, reloaded.plan, confirmation(args), sys.stdin, sys.stderr)
    if code is not None:
        return code
    return build_and_run(
        reloaded.loaded,
        reloaded.plan,
        env,
        endpoint=reloaded.endpoint,
        output=output,
        extra_options=reloaded.options,
    )
