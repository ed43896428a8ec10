"""``edis-fleet plan FLEET.yaml``: pre-flight against the account, then print the waves.

Everything ``validate`` checks, then one auth call and read-only image lists: every selected
VPS exists in the account, is not suspended, and is offered its image. Prints the waves with
their VPSes and budgets, the blast radius and an ETA; ``-o`` writes a plan file whose hash
binds the manifest, the selection, the targets and every rendered user-data document.
Exit 0, 2 (manifest, selection or pre-flight problem) or 3 (the account refused the login).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.cli import exitcodes
from orchestrator.cli.args import (
    add_account_overrides,
    add_selection_arguments,
    endpoint,
    load_options,
)
from orchestrator.run.options import PlanFormat

if TYPE_CHECKING:
    from orchestrator.run import Plan, PreflightReport


def register(sub: Any) -> None:
    """Add the ``plan`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "plan",
        help="check a fleet against the account and print the waves (nothing is wiped)",
        description="Validate the manifest, check every selected VPS against the account "
        "(exists, not suspended, image offered) and print the waves, blast radius and ETA. "
        "Sends only read-only requests.",
    )
    add_selection_arguments(p)
    add_account_overrides(p)
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("-o", "--output", metavar="PLAN.json", help="write the plan to this file")
    p.add_argument(
        "--format",
        choices=[f.value for f in PlanFormat],
        default=PlanFormat.TEXT.value,
        help="what to print (text)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run pre-flight and print the plan; return the exit code."""
    import anyio

    from orchestrator.cli.output import fail, refuse
    from orchestrator.errors import (
        ApiError,
        AuthenticationError,
        HostNotAllowedError,
        ManifestError,
    )
    from orchestrator.run.load import (
        Refusal,
        check_account,
        load_and_select,
        plan_for,
        read_credentials,
    )
    from orchestrator.templates import CloudInitSchema

    env = dict(os.environ)
    loaded = load_and_select(load_options(args), env, CloudInitSchema.find())
    if isinstance(loaded, Refusal):
        return refuse(loaded, sys.stderr)
    redact = loaded.redact
    try:
        plan = plan_for(loaded, endpoint(args))
    except ManifestError as exc:
        return fail(args.fleet, exc.problems, [], redact, sys.stderr)
    try:
        credentials = read_credentials(loaded.fleet, env)
    except (KeyError, OSError, ValueError) as exc:
        return fail(args.fleet, [f"account credentials: {exc}"], [], redact, sys.stderr)
    redact.add(credentials.password)
    try:
        found = anyio.run(check_account, loaded.fleet, loaded.selected, endpoint(args), credentials)
    except AuthenticationError as exc:
        sys.stderr.write(redact(f"{args.fleet}: {exc}\n"))
        return exitcodes.ABORTED
    except (ApiError, HostNotAllowedError) as exc:
        sys.stderr.write(redact(f"{args.fleet}: pre-flight could not reach the account: {exc}\n"))
        return exitcodes.USAGE
    except ManifestError as exc:  # e.g. a ca_file that changed since it was checked
        return fail(args.fleet, exc.problems, [], redact, sys.stderr)
    if not found.ok:
        return refuse(loaded.refusal(found.problems, warnings=True), sys.stderr)

    if args.output:
        try:
            write_plan(Path(args.output), plan)
        except OSError as exc:
            sys.stderr.write(f"cannot write {args.output}: {exc}\n")
            return exitcodes.USAGE
    if PlanFormat(args.format) is PlanFormat.JSON:
        sys.stdout.write(json.dumps(plan.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(redact(render_text(plan, found, loaded.report.warnings)) + "\n")
    return exitcodes.OK


def write_plan(path: Path, plan: Plan) -> None:
    """Write the plan as JSON, whole (``write_atomic``). Raises ``OSError``."""
    from orchestrator.atomic import write_atomic

    # A plan holds no secrets: readable like any file the user writes.
    write_atomic(path, json.dumps(plan.to_json(), indent=2) + "\n", mode=0o644)


def render_text(plan: Plan, found: PreflightReport, warnings: list[str]) -> str:
    """Return the plan as the text a person reads before saying yes."""
    lines = [
        f"plan for {plan.manifest_path} ({plan.fleet_name})",
        f"  blast radius: {plan.blast_radius} VPS(es) will be WIPED"
        + (f", {plan.protected} of them protected" if plan.protected else ""),
        f"  account:      {found.account_size} VPSes; every selected one exists, is not "
        "suspended and offers its image",
        f"  rollout:      concurrency {plan.rollout.concurrency}, "
        f"{plan.rollout.rate_per_s:g} requests/s, soak {plan.rollout.soak_s:g}s between "
        f"waves, in-doubt policy {plan.rollout.in_doubt.value}",
        f"  budgets:      run {plan.run_budget} failure(s); per wave as listed. A failure one "
        "past a budget stops new sends; reinstalls already in flight finish and are recorded "
        "(so the final count can exceed the budget by at most the concurrency).",
        f"  ETA:          about {_duration(plan.eta_s)} (sending at the rate, then the longest "
        "install of each wave)",
    ]
    by_id = {t.kvm_id: t for t in plan.targets}
    for wave in plan.waves:
        lines.append(
            f"  wave {wave.index}: {wave.size} VPS(es), budget {wave.failure_budget}, "
            f"about {_duration(wave.eta_s)}"
        )
        shown = wave.kvm_ids[:20]
        for kvm_id in shown:
            t = by_id[kvm_id]
            mark = "  [protected]" if t.protected else ""
            lines.append(f"    {kvm_id}  {t.hostname:<24} {t.image}{mark}")
        if len(wave.kvm_ids) > len(shown):
            lines.append(f"    ... and {len(wave.kvm_ids) - len(shown)} more")
    if warnings:
        lines.append(f"  warnings: {len(warnings)}")
        lines += [f"    {w}" for w in warnings]
    lines.append(f"  plan hash: {plan.content_hash}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
