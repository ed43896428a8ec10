"""``edis-fleet apply FLEET.yaml``: reinstall the selected fleet. WIPES DISKS.

Everything ``plan`` checks, then the guard (more than 10 VPSes, or any protected one, needs
``--yes`` or ``--confirm-count N``; a terminal is asked), then the run: waves, rate limits,
safe retries, session refresh, readiness, a journal written before every send, and the
reports. ``--plan plan.json`` refuses a plan whose manifest, selection or rendered user-data
changed since it was written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.cli import exitcodes
from orchestrator.cli.args import (
    add_account_overrides,
    add_output_arguments,
    add_selection_arguments,
    confirmation,
    count,
    endpoint,
    load_options,
    output_options,
)


def register(sub: Any) -> None:
    """Add the ``apply`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "apply",
        help="reinstall the selected VPSes (WIPES DISKS)",
        description="Reinstall the selected VPSes of a fleet manifest, in waves. WIPES DISKS.",
    )
    add_selection_arguments(p)
    add_account_overrides(p)
    p.add_argument("--strict", action="store_true", help="treat manifest warnings as errors")
    p.add_argument(
        "--plan", metavar="PLAN.json", help="apply exactly this plan (refused if anything changed)"
    )
    p.add_argument("--yes", action="store_true", help="do not ask before wiping")
    p.add_argument(
        "--confirm-count",
        type=count,
        metavar="N",
        help="confirm the number of VPSes to wipe (must equal the blast radius)",
    )
    p.add_argument(
        "--rto",
        type=_duration,
        metavar="DURATION",
        help="recovery time objective, e.g. 30m (overrides rollout.rto): first send → last "
        "ready is checked at the end; a miss exits 7",
    )
    add_output_arguments(p)
    p.set_defaults(handler=run)


def _duration(value: str) -> float:
    """``--rto``: a duration such as ``30m`` or ``1h30m``, in seconds (at least 1 s)."""
    from orchestrator.units import parse_duration

    try:
        return parse_duration(value, minimum=1.0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Check, guard, reinstall; return the exit code (see ``edis-fleet --help``)."""
    from orchestrator.cli.output import fail, refuse
    from orchestrator.cli.running import build_and_run, guard
    from orchestrator.errors import ManifestError
    from orchestrator.run.load import Refusal, load_and_select, plan_for
    from orchestrator.run.options import SelectionOptions
    from orchestrator.run.plan import recorded_endpoint
    from orchestrator.templates import CloudInitSchema

    env = dict(os.environ)
    options = load_options(args)
    if args.plan and options.selection.narrows:
        sys.stderr.write("--plan carries its own selection: drop --only/--limit/--exclude\n")
        return exitcodes.USAGE
    plan_file: dict[str, Any] | None = None
    if args.plan:
        try:
            plan_file = json.loads(Path(args.plan).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"cannot read plan {args.plan}: {exc}\n")
            return exitcodes.USAGE
        recorded = SelectionOptions.from_recorded(plan_file.get("selection") or {})
        options = replace(options, selection=recorded)
    loaded = load_and_select(options, env, CloudInitSchema.find())
    if isinstance(loaded, Refusal):
        return refuse(loaded, sys.stderr)
    try:
        plan = plan_for(loaded, endpoint(args))
    except ManifestError as exc:
        return fail(args.fleet, exc.problems, [], loaded.redact, sys.stderr)
    checked = None if plan_file is None else recorded_endpoint(plan_file)
    if checked is not None and checked != plan.endpoint:
        # Before any connection: a plan checked against one API is never applied to another.
        sys.stderr.write(
            f"{args.plan} was checked against {checked.describe()}, not "
            f"{plan.endpoint.describe()}: pass the same --session-url/--allow-api-host, or "
            "run 'edis-fleet plan' for this endpoint. Nothing was sent.\n"
        )
        return exitcodes.USAGE
    if plan_file is not None and plan_file.get("content_hash") != plan.content_hash:
        sys.stderr.write(
            f"{args.plan} is stale: the manifest, its templates or the selection changed since "
            "it was written (its hash no longer matches). Run 'edis-fleet plan' again.\n"
        )
        return exitcodes.USAGE
    code = guard(loaded, plan, confirmation(args), sys.stdin, sys.stderr)
    if code is not None:
        return code
    # The RTO is recorded with the run, so that report and resume judge it the same way.
    rto = {"rto_s": args.rto} if args.rto is not None else None
    return build_and_run(
        loaded, plan, env, endpoint=endpoint(args), output=output_options(args), extra_options=rto
    )
