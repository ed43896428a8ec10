"""``edis-fleet validate FLEET.yaml``: check a manifest offline, before any disk is wiped.

No network at all: the manifest, its templates (rendered for every VPS), the files and
environment variables it names, and the selection are checked locally. When Debian's
``cloud-init`` is installed its schema check runs on the rendered documents too. Exit 0 with
a short summary when everything is in order; exit 2 with every problem on stderr otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from orchestrator.cli import exitcodes
from orchestrator.errors import SelectionError
from orchestrator.manifest import ManifestReport, SelectedFleet, Selection, check_manifest, select
from orchestrator.secrets import Redactor
from orchestrator.templates import DEFAULT_SCHEMA_DOCUMENTS, CloudInitSchema


def register(sub: Any) -> None:
    """Add the ``validate`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "validate",
        help="check a fleet manifest offline (no network)",
        description="Check a fleet manifest, its templates and the selection, offline. "
        "Exit 0 when clean, 2 with every problem listed.",
    )
    add_selection_arguments(p)
    p.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (e.g. a cloud-init template for an image without cloud-init) "
        "as errors",
    )
    p.add_argument(
        "--no-schema",
        action="store_true",
        help="skip the 'cloud-init schema' check even when cloud-init is installed",
    )
    p.add_argument(
        "--schema-limit",
        type=int,
        default=DEFAULT_SCHEMA_DOCUMENTS,
        metavar="N",
        help="run 'cloud-init schema' on at most N distinct documents, about 0.2 s each "
        f"(default {DEFAULT_SCHEMA_DOCUMENTS}; 0: all of them)",
    )
    p.set_defaults(handler=run)


def add_selection_arguments(p: argparse.ArgumentParser) -> None:
    """Add FLEET and the selection options shared by validate, plan and run."""
    p.add_argument("fleet", metavar="FLEET.yaml", help="the fleet manifest")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE[,VALUE]",
        help="keep VPSes with this tag (tag=web) or group (group=db); repeat to narrow further",
    )
    p.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="KVM_ID[,KVM_ID]",
        help="keep only these VPSes",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="KVM_ID[,KVM_ID]",
        help="leave these VPSes out",
    )
    p.add_argument(
        "--include-protected",
        action="store_true",
        help="also select VPSes marked 'protected: true' (they are left out otherwise)",
    )


@dataclass
class Loaded:
    """A manifest checked and a selection applied; ``problems`` is empty when both worked."""

    report: ManifestReport
    selection: Selection | None
    selected: SelectedFleet | None
    problems: list[str]


def load_and_select(
    args: argparse.Namespace, env: Mapping[str, str], schema: CloudInitSchema | None
) -> Loaded:
    """Check the manifest named by ``args.fleet`` and apply the selection options.

    Collects every problem (manifest and selection) instead of raising.
    """
    problems: list[str] = []
    selection: Selection | None = None
    try:
        selection = Selection.from_args(
            only=args.only,
            limit=args.limit,
            exclude=args.exclude,
            include_protected=args.include_protected,
        )
    except SelectionError as exc:
        problems += exc.problems
    report = check_manifest(args.fleet, env, strict=args.strict, schema=schema)
    problems += report.problems
    selected = None
    if report.fleet is not None and selection is not None:
        try:
            selected = select(report.fleet, selection)
        except SelectionError as exc:
            problems += exc.problems
    return Loaded(report, selection, selected, problems)


def run(args: argparse.Namespace) -> int:
    """Validate the manifest; print a summary (exit 0) or every problem (exit 2)."""
    started = time.monotonic()
    env = dict(os.environ)
    schema = None if args.no_schema else CloudInitSchema.find(max_documents=args.schema_limit)
    loaded = load_and_select(args, env, schema)
    report, selected, problems = loaded.report, loaded.selected, loaded.problems
    redact = report.redactor
    if problems or report.fleet is None or selected is None:
        return fail(args.fleet, problems, report.warnings, redact, sys.stderr)

    fleet = report.fleet
    rollout = fleet.rollout
    waves = ", ".join(str(w) for w in rollout.waves)
    lines = [
        f"{args.fleet}: valid",
        f"  VPSes:        {len(fleet)} in the manifest, {len(selected)} selected",
        f"  blast radius: {selected.blast_radius}",
        f"  rollout:      waves [{waves}], concurrency {rollout.concurrency}, "
        f"{rollout.rate_per_s:g} requests/s",
    ]
    t = report.templates
    if t is not None:
        if t.schema_available:
            schema_note = f"cloud-init schema checked {t.schema_checked} distinct document(s)"
            if t.schema_unchecked:
                schema_note += (
                    f", {t.schema_unchecked} more not checked (--schema-limit {args.schema_limit})"
                )
        elif args.no_schema:
            schema_note = "cloud-init schema skipped (--no-schema)"
        else:
            schema_note = "cloud-init schema not checked (cloud-init is not installed)"
        lines.append(f"  user data:    {t.rendered} document(s) rendered; {schema_note}")
    lines.append(f"  warnings:     {len(report.warnings)}")
    lines += [f"    {w}" for w in report.warnings]
    lines.append(f"  checked in {time.monotonic() - started:.2f}s")
    sys.stdout.write(redact("\n".join(lines)) + "\n")
    return exitcodes.OK


def fail(
    fleet: str, problems: list[str], warnings: list[str], redact: Redactor, err: TextIO
) -> int:
    """Write every problem (and warning) to ``err``, redacted; return exit code 2."""
    count = len(problems)
    err.write(f"{fleet}: {count} problem{'s' if count != 1 else ''}\n")
    for problem in problems:
        err.write(redact(problem) + "\n")
    if warnings:
        err.write(f"and {len(warnings)} warning{'s' if len(warnings) != 1 else ''}:\n")
        for warning in warnings:
            err.write(redact(warning) + "\n")
    return exitcodes.USAGE
