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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from orchestrator.cli import exitcodes
from orchestrator.cli.apply_cmd import (
    add_output_arguments,
    build_and_run,
    guard,
    selection_args_from,
)
from orchestrator.cli.plan_cmd import add_account_overrides, user_data_hashes
from orchestrator.cli.runs_cmd import RunView, read_run
from orchestrator.cli.validate_cmd import fail, load_and_select
from orchestrator.errors import JournalError, ManifestError
from orchestrator.run import Plan, ResumePoint, build_plan, manifest_sha256
from orchestrator.templates import CloudInitSchema


def register(sub: Any) -> None:
    """Add ``resume`` and ``retry-failed``."""
    resume = sub.add_parser("resume", help="continue a run that stopped, sending nothing twice")
    _common(resume)
    resume.set_defaults(handler=resume_run)
    retry = sub.add_parser(
        "retry-failed", help="a new run over the VPSes that failed in RUN_ID (not the in-doubt)"
    )
    _common(retry)
    retry.add_argument("--yes", action="store_true", help="do not ask before wiping")
    retry.add_argument("--confirm-count", type=int, metavar="N", help="confirm the count")
    retry.set_defaults(handler=retry_failed)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument(
        "--force",
        action="store_true",
        help="go ahead although the manifest or rendered user-data changed since the run",
    )
    add_account_overrides(p)
    add_output_arguments(p)


def resume_run(args: argparse.Namespace) -> int:
    """Continue ``args.run_id``; exit codes as ``apply``."""
    env = dict(os.environ)
    try:
        view = read_run(args.journal, args.run_id)
    except JournalError as exc:
        sys.stderr.write(f"{exc}\n")
        return exitcodes.USAGE
    c = view.classification
    todo = [*c.pending, *c.skipped, *c.accepted, *c.unresolved]
    if not todo:
        sys.stdout.write(f"run {view.run.id} has nothing left to do ({view.run.status.value})\n")
        return exitcodes.OK
    loaded = _reload(args, env, view, todo, include_protected=True)
    if isinstance(loaded, int):
        return loaded
    fleet, selected, plan, redact = loaded
    by_id = {t.kvm_id: t for t in view.targets}
    point = ResumePoint(
        run_id=view.run.id,
        pending={*c.pending, *c.skipped},
        accepted=set(c.accepted),
        in_doubt_since={k: by_id[k].sent_at or by_id[k].queued_at for k in c.unresolved},
        prior_failures=_failures_per_wave(view),
    )
    return build_and_run(
        args, env, fleet=fleet, selected=selected, plan=plan, redact=redact, resume=point
    )


def retry_failed(args: argparse.Namespace) -> int:
    """Start a new run over the failed VPSes of ``args.run_id``; exit codes as ``apply``."""
    env = dict(os.environ)
    try:
        view = read_run(args.journal, args.run_id)
    except JournalError as exc:
        sys.stderr.write(f"{exc}\n")
        return exitcodes.USAGE
    failed = list(view.classification.failed)
    if not failed:
        sys.stdout.write(f"run {view.run.id} has no failed VPSes\n")
        return exitcodes.OK
    loaded = _reload(args, env, view, failed, limit=failed)
    if isinstance(loaded, int):
        return loaded
    fleet, selected, plan, redact = loaded
    code = guard(plan, selected, args, sys.stdin, sys.stderr)
    if code is not None:
        return code
    return build_and_run(
        args,
        env,
        fleet=fleet,
        selected=selected,
        plan=plan,
        redact=redact,
        options={"retry_of": view.run.id},
    )


def _reload(
    args: argparse.Namespace,
    env: Mapping[str, str],
    view: RunView,
    kvm_ids: Sequence[str],
    *,
    include_protected: bool = False,
    limit: Iterable[str] | None = None,
) -> tuple[Any, Any, Plan, Any] | int:
    """Load the run's manifest with the run's selection (narrowed to ``limit``), and refuse
    (exit 2) when it or the user-data of ``kvm_ids`` changed since the run, unless --force."""
    args.fleet = view.run.manifest_path
    args.strict = False
    # Same endpoint as the run unless told otherwise: a rehearsal stays a rehearsal.
    recorded = view.run.options
    if not args.session_url and isinstance(recorded.get("session_url"), str):
        args.session_url = recorded["session_url"]
    if not args.allow_api_host and isinstance(recorded.get("allow_api_host"), list):
        args.allow_api_host = [str(h) for h in recorded["allow_api_host"]]
    selection_args_from(args, view.run.options.get("selection") or {})
    if include_protected:
        # What the run selected is what it may finish; protected ones were confirmed then.
        args.include_protected = True
    if limit is not None:
        args.limit = [",".join(limit)]
    loaded = load_and_select(args, env, CloudInitSchema.find())
    report, selected, selection = loaded.report, loaded.selected, loaded.selection
    if loaded.problems or report.fleet is None or selected is None or selection is None:
        return fail(args.fleet, loaded.problems, report.warnings, report.redactor, sys.stderr)
    try:
        hashes = user_data_hashes(report.fleet, selected)
    except ManifestError as exc:
        return fail(args.fleet, exc.problems, [], report.redactor, sys.stderr)
    plan = build_plan(
        selected,
        selection,
        manifest_hash=manifest_sha256(report.fleet.path),
        user_data_hashes=hashes,
    )
    refused = _changed(view, plan, kvm_ids, args.force)
    if refused:
        return fail(args.fleet, refused, [], report.redactor, sys.stderr)
    return report.fleet, selected, plan, report.redactor


def _changed(view: RunView, plan: Plan, kvm_ids: Iterable[str], force: bool) -> list[str]:
    """Return why the run's inputs changed (nothing when they did not, or with ``force``)."""
    if force:
        return []
    problems: list[str] = []
    if plan.manifest_sha256 != view.run.manifest_sha256:
        problems.append(
            f"{view.run.manifest_path} changed since run {view.run.id}; pass --force to go "
            "ahead with the manifest as it is now"
        )
    recorded = {t.kvm_id: t.user_data_sha256 for t in view.targets}
    now = {t.kvm_id: t.user_data_sha256 for t in plan.targets}
    for kvm_id in kvm_ids:
        if kvm_id not in now:
            problems.append(f"{kvm_id} is no longer selected by the manifest")
        elif now[kvm_id] != recorded.get(kvm_id):
            problems.append(
                f"{kvm_id}: its rendered user-data changed since run {view.run.id}; "
                "pass --force to send the new one"
            )
    return problems


def _failures_per_wave(view: RunView) -> dict[int, int]:
    failed = {*view.classification.failed, *view.classification.in_doubt}
    counts: dict[int, int] = {}
    for t in view.targets:
        if t.kvm_id in failed:
            counts[t.wave] = counts.get(t.wave, 0) + 1
    return counts
