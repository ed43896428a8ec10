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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import anyio

from orchestrator.cli import exitcodes
from orchestrator.cli.plan_cmd import add_account_overrides, user_data_hashes
from orchestrator.cli.progress import Progress, choose_mode
from orchestrator.cli.validate_cmd import add_selection_arguments, fail, load_and_select
from orchestrator.errors import (
    AuthenticationError,
    EdisFleetError,
    JournalError,
    LockedError,
    ManifestError,
    PreflightError,
)
from orchestrator.fleet import Fleet
from orchestrator.manifest import SelectedFleet
from orchestrator.model import TargetState
from orchestrator.report import (
    NdjsonSink,
    json_report,
    junit_report,
    text_report,
    write_atomic,
)
from orchestrator.run import (
    Plan,
    ResumePoint,
    RunOutcome,
    RunSpec,
    build_plan,
    build_spec,
    execute,
    manifest_sha256,
)
from orchestrator.secrets import Redactor
from orchestrator.templates import CloudInitSchema

GUARD_LIMIT = 10
DEFAULT_JOURNAL = Path(".edis-fleet") / "journal.sqlite"


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
        type=int,
        metavar="N",
        help="confirm the number of VPSes to wipe (must equal the blast radius)",
    )
    add_output_arguments(p)
    p.set_defaults(handler=run)


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that run reinstalls (apply, resume, retry-failed)."""
    p.add_argument(
        "--journal",
        default=str(DEFAULT_JOURNAL),
        metavar="PATH",
        help=f"the run journal (default {DEFAULT_JOURNAL})",
    )
    p.add_argument("--report-json", metavar="FILE", help="write the JSON report here at the end")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report here at the end")
    p.add_argument(
        "--events",
        metavar="FILE",
        help="stream one JSON line per state change to FILE ('-' for stdout)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress and no final report on the terminal"
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="progress as text (a live view on a terminal) or as JSON lines",
    )


def run(args: argparse.Namespace) -> int:
    """Check, guard, reinstall; return the exit code (see ``edis-fleet --help``)."""
    env = dict(os.environ)
    if args.plan and (args.only or args.limit or args.exclude or args.include_protected):
        sys.stderr.write("--plan carries its own selection: drop --only/--limit/--exclude\n")
        return exitcodes.USAGE
    plan_file: dict[str, Any] | None = None
    if args.plan:
        try:
            plan_file = json.loads(Path(args.plan).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"cannot read plan {args.plan}: {exc}\n")
            return exitcodes.USAGE
        selection_args_from(args, plan_file.get("selection") or {})
    loaded = load_and_select(args, env, CloudInitSchema.find())
    report, selected, selection = loaded.report, loaded.selected, loaded.selection
    redact = report.redactor
    if loaded.problems or report.fleet is None or selected is None or selection is None:
        return fail(args.fleet, loaded.problems, report.warnings, redact, sys.stderr)
    fleet = report.fleet
    try:
        plan = build_plan(
            selected,
            selection,
            manifest_hash=manifest_sha256(fleet.path),
            user_data_hashes=user_data_hashes(fleet, selected),
        )
    except ManifestError as exc:
        return fail(args.fleet, exc.problems, [], redact, sys.stderr)
    if plan_file is not None and plan_file.get("content_hash") != plan.content_hash:
        sys.stderr.write(
            f"{args.plan} is stale: the manifest, its templates or the selection changed since "
            "it was written (its hash no longer matches). Run 'edis-fleet plan' again.\n"
        )
        return exitcodes.USAGE
    code = guard(plan, selected, args, sys.stdin, sys.stderr)
    if code is not None:
        return code
    return build_and_run(args, env, fleet=fleet, selected=selected, plan=plan, redact=redact)


def build_and_run(
    args: argparse.Namespace,
    env: Mapping[str, str],
    *,
    fleet: Fleet,
    selected: SelectedFleet,
    plan: Plan,
    redact: Redactor,
    resume: ResumePoint | None = None,
    options: Mapping[str, Any] | None = None,
) -> int:
    """Build the run (rendering user data, reading credentials), run it, report; return the
    exit code. Problems building it are printed like manifest problems (exit 2)."""
    try:
        spec = build_spec(
            args, env, fleet=fleet, selected=selected, plan=plan, redact=redact, resume=resume
        )
    except ManifestError as exc:
        return fail(args.fleet, exc.problems, [], redact, sys.stderr)
    except (KeyError, OSError, ValueError) as exc:
        return fail(args.fleet, [f"credentials: {exc}"], [], redact, sys.stderr)
    spec.options = {**spec.options, **(options or {})}
    return run_and_report(spec, args, env)


def run_and_report(spec: RunSpec, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Attach progress and event sinks, run, write the reports; return the exit code."""
    hostnames = {t.kvm_id: t.hostname for t in spec.targets}
    sizes = {w.index: len(w.jobs) for w in spec.waves}
    spec.progress = Progress(
        sum(sizes.values()),
        sizes,
        stream=sys.stderr,
        mode=choose_mode(sys.stderr, quiet=args.quiet, log_format=args.log_format, env=env),
        hostnames=hostnames,
        redact=spec.redact,
    )
    events_file: TextIO | None = None
    if args.events:
        events_file = (
            sys.stdout if args.events == "-" else open(args.events, "w", encoding="utf-8")  # noqa: SIM115
        )
        spec.sinks = [*spec.sinks, NdjsonSink(events_file, hostnames=hostnames, redact=spec.redact)]
    try:
        outcome = anyio_run(spec)
    finally:
        if events_file is not None and events_file is not sys.stdout:
            events_file.close()
    if isinstance(outcome, RunOutcome):
        write_reports(outcome, args, spec.redact)
    return finish(
        outcome,
        spec.redact,
        sys.stdout if args.events != "-" else sys.stderr,
        sys.stderr,
        quiet=args.quiet,
    )


def write_reports(
    outcome: RunOutcome, args: argparse.Namespace, redact: Callable[[str], str]
) -> None:
    """Write the JSON and JUnit reports the options ask for (errors are reported, not fatal:
    the journal holds everything and ``edis-fleet report`` can write them again)."""
    run, targets, attempts = outcome.run, outcome.targets, outcome.attempts
    if args.report_json:
        data = json_report(run, targets, attempts, redact=redact)
        _write(args.report_json, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if args.junit:
        _write(args.junit, junit_report(run, targets, attempts, redact=redact))


def _write(path: str, text: str) -> None:
    try:
        write_atomic(Path(path), text)
    except OSError as exc:
        sys.stderr.write(f"cannot write {path}: {exc}\n")


class Interrupted(EdisFleetError):
    """The operator stopped the command before the run started sending."""


def anyio_run(spec: RunSpec) -> RunOutcome | EdisFleetError:
    """Run ``execute`` on a fresh event loop; return its outcome or the error that stopped it."""
    try:
        return anyio.run(execute, spec)
    except EdisFleetError as exc:
        return exc
    except KeyboardInterrupt:
        # Ctrl-C before the waves started (pre-flight, set-up): nothing was sent.
        return Interrupted("interrupted before the first reinstall; nothing was sent")


def finish(
    outcome: RunOutcome | EdisFleetError,
    redact: Callable[[str], str],
    out: TextIO,
    err: TextIO,
    *,
    quiet: bool = False,
) -> int:
    """Print how the run ended (the text report unless ``quiet``) and return its exit code."""
    if isinstance(outcome, Interrupted):
        err.write(f"{outcome}\n")
        return exitcodes.INTERRUPTED
    if isinstance(outcome, AuthenticationError):
        err.write(redact(f"aborted: {outcome}\n"))
        return exitcodes.ABORTED
    if isinstance(outcome, PreflightError):
        err.write(f"pre-flight failed, nothing was sent ({len(outcome.problems)} problems):\n")
        err.writelines(redact(p) + "\n" for p in outcome.problems)
        return exitcodes.USAGE
    if isinstance(outcome, LockedError | JournalError):
        err.write(redact(f"refused: {outcome}\n"))
        return exitcodes.USAGE
    if isinstance(outcome, EdisFleetError):
        err.write(redact(f"error: {outcome}\n"))
        return exitcodes.USAGE
    result = outcome.result
    if not quiet:
        report = text_report(outcome.run, outcome.targets, outcome.attempts, redact=redact)
        out.write(report.rstrip("\n") + "\n")
    if result.interrupted:
        err.write(f"interrupted; resume with: edis-fleet resume {outcome.run_id}\n")
        return exitcodes.INTERRUPTED
    if result.aborted is not None:
        err.write(f"aborted: {result.aborted}\n")
        return exitcodes.ABORTED
    if result.count(TargetState.FAILED):
        return exitcodes.FAILED
    if result.count(TargetState.IN_DOUBT):
        return exitcodes.IN_DOUBT
    return exitcodes.OK


def guard(
    plan: Plan, selected: SelectedFleet, args: argparse.Namespace, stdin: TextIO, err: TextIO
) -> int | None:
    """Return None when the run may go ahead, or the exit code that refuses it.

    More than ``GUARD_LIMIT`` VPSes, or any protected one, needs ``--yes`` or
    ``--confirm-count`` equal to the blast radius; on a terminal the operator is shown the
    targets and asked to type the count.
    """
    radius = plan.blast_radius
    if args.confirm_count is not None and args.confirm_count != radius:
        err.write(
            f"--confirm-count {args.confirm_count} does not match: this run would wipe "
            f"{radius} VPS(es). Nothing was sent.\n"
        )
        return exitcodes.USAGE
    if radius <= GUARD_LIMIT and not plan.protected:
        return None
    if args.yes or args.confirm_count == radius:
        return None
    why = f"this run would wipe {radius} VPS(es)" + (
        f", {plan.protected} of them protected" if plan.protected else ""
    )
    if not stdin.isatty():
        err.write(
            f"{why}: pass --yes or --confirm-count {radius} to go ahead "
            "(no terminal to ask). Nothing was sent.\n"
        )
        return exitcodes.USAGE
    err.write(f"{why}:\n")
    for entry in selected.vps:
        mark = "  [protected]" if entry.protected else ""
        err.write(f"  {entry.id}  {entry.hostname}  {entry.image}{mark}\n")
    err.write(f"type {radius} to wipe them, anything else to stop: ")
    err.flush()
    answer = stdin.readline().strip()
    if answer != str(radius):
        err.write("not confirmed. Nothing was sent.\n")
        return exitcodes.USAGE
    return None


def selection_args_from(args: argparse.Namespace, chosen: Mapping[str, Any]) -> None:
    """Set the selection options of ``args`` from a selection as plans and runs record it."""
    args.only = [f"{key}={','.join(values)}" for key, values in chosen.get("only", [])]
    args.limit = [",".join(chosen["limit"])] if chosen.get("limit") else []
    args.exclude = [",".join(chosen["exclude"])] if chosen.get("exclude") else []
    args.include_protected = bool(chosen.get("include_protected"))
