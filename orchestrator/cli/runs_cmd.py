"""``edis-fleet runs``, ``status RUN_ID`` and ``report RUN_ID``: reading the journal.

Nothing here talks to the API or changes a run.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.cli import exitcodes
from orchestrator.cli.args import add_journal_argument
from orchestrator.run.options import ReportFormat


def register(sub: Any) -> None:
    """Add ``runs``, ``status`` and ``report``."""
    runs = sub.add_parser("runs", help="list the runs in the journal")
    add_journal_argument(runs)
    runs.set_defaults(handler=list_runs)

    status = sub.add_parser("status", help="show one run: states, failures, what is left")
    status.add_argument("run_id", metavar="RUN_ID")
    add_journal_argument(status)
    status.set_defaults(handler=show_status)

    report = sub.add_parser(
        "report", help="write a run's report (text, JSON, JUnit, NDJSON, Markdown, HTML)"
    )
    report.add_argument("run_id", metavar="RUN_ID")
    report.add_argument(
        "--format",
        choices=[f.value for f in ReportFormat],
        default=ReportFormat.TEXT.value,
        help="(text) markdown: for CI job summaries and chat; html: the drill record, one "
        "self-contained page",
    )
    report.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    add_journal_argument(report)
    report.set_defaults(handler=write_report)


def list_runs(args: argparse.Namespace) -> int:
    """Print one line per run, newest last."""
    import anyio

    from orchestrator.errors import JournalError
    from orchestrator.model import TargetState
    from orchestrator.run.resume import list_judged
    from orchestrator.run.spec import journal_config

    try:
        runs = anyio.run(list_judged, journal_config(args.journal, os.environ))
    except JournalError as exc:
        sys.stderr.write(f"{exc}\n")
        return exitcodes.USAGE
    if not runs:
        sys.stdout.write("no runs recorded\n")
        return exitcodes.OK
    sys.stdout.write(
        f"{'run':<24} {'status':<12} {'started (UTC)':<20} {'ready':>6} {'failed':>6} "
        f"{'doubt':>6} {'exit':>4}  manifest\n"
    )
    for run, tally in runs:
        # The same judgement as the run's exit code, ``status`` and ``report`` (one function).
        code = "-" if tally.exit_code is None else str(tally.exit_code)
        sys.stdout.write(
            f"{run.id:<24} {tally.status.value:<12} {_when(run.started_at):<20} "
            f"{tally.count(TargetState.READY):>6} {tally.count(TargetState.FAILED):>6} "
            f"{tally.in_doubt:>6} {code:>4}  {run.manifest_path}\n"
        )
    return exitcodes.OK


def show_status(args: argparse.Namespace) -> int:
    """Print a run's report and what resume would do with it."""
    import anyio

    from orchestrator.errors import JournalError
    from orchestrator.report import text_report
    from orchestrator.run.resume import read_run
    from orchestrator.run.spec import journal_config

    try:
        view = anyio.run(read_run, journal_config(args.journal, os.environ), args.run_id)
    except JournalError as exc:
        sys.stderr.write(f"{exc}\n")
        return exitcodes.USAGE
    sys.stdout.write(text_report(view.run, view.targets, view.attempts, per_vps=False))
    tally = view.tally
    code = "none yet (running)" if tally.exit_code is None else str(tally.exit_code)
    sys.stdout.write(
        f"\nverdict: {tally.verdict.value} (exit code {code}); in doubt: {tally.in_doubt}\n"
    )
    if view.run.error:
        sys.stdout.write(f"stopped by: {view.run.error}\n")
    c = view.classification
    left = len(view.left)
    owed = len(view.resend_owed)
    sys.stdout.write(
        f"resume would: send {len(c.pending) + len(c.skipped)}, check readiness of "
        f"{len(c.accepted)}, treat {len(c.unresolved)} as in doubt (intent without outcome)"
        + (f", resend {owed} after their install window" if owed else "")
        + (f" — edis-fleet resume {view.run.id}\n" if left else "; nothing is left to do\n")
    )
    return exitcodes.OK


def write_report(args: argparse.Namespace) -> int:
    """Write the report of a run in the chosen format."""
    import anyio

    from orchestrator.errors import JournalError
    from orchestrator.report import write_atomic
    from orchestrator.run.reports import render_report
    from orchestrator.run.resume import read_run
    from orchestrator.run.spec import journal_config

    try:
        view = anyio.run(read_run, journal_config(args.journal, os.environ), args.run_id)
    except JournalError as exc:
        sys.stderr.write(f"{exc}\n")
        return exitcodes.USAGE
    text = render_report(view.run, view.targets, view.attempts, ReportFormat(args.format))
    if args.output:
        try:
            write_atomic(Path(args.output), text)
        except OSError as exc:
            sys.stderr.write(f"cannot write {args.output}: {exc}\n")
            return exitcodes.USAGE
    else:
        sys.stdout.write(text)
    return exitcodes.OK


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")
