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
from typing import Any

from orchestrator.cli import exitcodes
from orchestrator.cli.args import add_selection_arguments, count, load_options
from orchestrator.templates.defaults import DEFAULT_SCHEMA_DOCUMENTS


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
        type=count,
        default=DEFAULT_SCHEMA_DOCUMENTS,
        metavar="N",
        help="run 'cloud-init schema' on at most N distinct documents, about 0.2 s each "
        f"(default {DEFAULT_SCHEMA_DOCUMENTS}; 0: all of them)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate the manifest; print a summary (exit 0) or every problem (exit 2)."""
    from orchestrator.cli.output import refuse
    from orchestrator.run.load import Refusal, load_and_select
    from orchestrator.templates import CloudInitSchema

    started = time.monotonic()
    env = dict(os.environ)
    schema = None if args.no_schema else CloudInitSchema.find(max_documents=args.schema_limit)
    loaded = load_and_select(load_options(args), env, schema)
    if isinstance(loaded, Refusal):
        return refuse(loaded, sys.stderr)
    report, fleet, selected, redact = loaded.report, loaded.fleet, loaded.selected, loaded.redact
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
