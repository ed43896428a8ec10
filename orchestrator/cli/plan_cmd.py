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
from typing import Any

import anyio

from orchestrator.cli import exitcodes
from orchestrator.cli.validate_cmd import add_selection_arguments, fail, load_and_select
from orchestrator.clock import SystemClock
from orchestrator.edis.client import EdisClient
from orchestrator.edis.session import SessionBook
from orchestrator.errors import (
    ApiError,
    AuthenticationError,
    HostNotAllowedError,
    ManifestError,
)
from orchestrator.fleet import Fleet
from orchestrator.manifest import SelectedFleet
from orchestrator.run import Check, Plan, PreflightReport, build_plan, manifest_sha256, preflight
from orchestrator.secrets import Secret, read_source
from orchestrator.templates import CloudInitSchema, Templates

# User-data documents are hashed as rendered with this in place of the root password (see
# orchestrator.run.plan): generated passwords change every run, and a plan file must not carry a
# hash of a real password.
HASH_PLACEHOLDER = Secret("<root-password>")


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
        "--format", choices=("text", "json"), default="text", help="what to print (text)"
    )
    p.set_defaults(handler=run)


def add_account_overrides(p: argparse.ArgumentParser) -> None:
    """Options that point a manifest at another API endpoint (a rehearsal on the simulator)."""
    p.add_argument(
        "--session-url",
        metavar="URL",
        help="use this session URL instead of the manifest's (e.g. the bundled simulator)",
    )
    p.add_argument(
        "--allow-api-host",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also allow these api hosts (a host, '*.domain' or a CIDR such as 127.0.0.0/8)",
    )


def run(args: argparse.Namespace) -> int:
    """Run pre-flight and print the plan; return the exit code."""
    env = dict(os.environ)
    loaded = load_and_select(args, env, CloudInitSchema.find())
    report, selected, selection = loaded.report, loaded.selected, loaded.selection
    redact = report.redactor
    if loaded.problems or report.fleet is None or selected is None or selection is None:
        return fail(args.fleet, loaded.problems, report.warnings, redact, sys.stderr)
    fleet = report.fleet
    try:
        hashes = user_data_hashes(fleet, selected)
        email = read_source(fleet.account.email, env)
        password = Secret(read_source(fleet.account.password, env))
    except ManifestError as exc:
        return fail(args.fleet, exc.problems, [], redact, sys.stderr)
    except (KeyError, OSError, ValueError) as exc:
        return fail(args.fleet, [f"account credentials: {exc}"], [], redact, sys.stderr)
    redact.add(password)
    try:
        found = anyio.run(_preflight, fleet, selected, email, password, args)
    except AuthenticationError as exc:
        sys.stderr.write(redact(f"{args.fleet}: {exc}\n"))
        return exitcodes.ABORTED
    except (ApiError, HostNotAllowedError) as exc:
        sys.stderr.write(redact(f"{args.fleet}: pre-flight could not reach the account: {exc}\n"))
        return exitcodes.USAGE
    if not found.ok:
        return fail(args.fleet, found.problems, report.warnings, redact, sys.stderr)

    plan = build_plan(
        selected,
        selection,
        manifest_hash=manifest_sha256(fleet.path),
        user_data_hashes=hashes,
    )
    if args.output:
        try:
            write_plan(Path(args.output), plan)
        except OSError as exc:
            sys.stderr.write(f"cannot write {args.output}: {exc}\n")
            return exitcodes.USAGE
    if args.format == "json":
        sys.stdout.write(json.dumps(plan.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(redact(render_text(plan, found, report.warnings)) + "\n")
    return exitcodes.OK


def user_data_hashes(fleet: Fleet, selected: SelectedFleet) -> dict[str, str | None]:
    """Return the SHA-256 of each selected VPS's user data, rendered with a placeholder
    password. Raises ``ManifestError`` when a template fails."""
    templates = Templates.for_fleet(fleet)
    hashes: dict[str, str | None] = {}
    for entry in selected.vps:
        if entry.template is None:
            hashes[entry.id] = None
        else:
            hashes[entry.id] = templates.render(entry, HASH_PLACEHOLDER).sha256
    return hashes


async def _preflight(
    fleet: Fleet, selected: SelectedFleet, email: str, password: Secret, args: argparse.Namespace
) -> PreflightReport:
    account = fleet.account
    async with EdisClient(
        session_url=args.session_url or account.session_url,
        email=email,
        password=password,
        allowed_hosts=(*account.allowed_api_hosts, *args.allow_api_host),
        ca_file=str(account.ca_file) if account.ca_file else None,
    ) as client:
        book = SessionBook(client, clock=SystemClock())
        checks = [Check(e.id, e.image, e.where) for e in selected.vps]
        return await preflight(checks, client=client, book=book)


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
