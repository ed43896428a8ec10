"""``edis-fleet runs``, ``status RUN_ID`` and ``report RUN_ID``: reading the journal.

Nothing here talks to the API or changes a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from orchestrator.cli import exitcodes
from orchestrator.cli.apply_cmd import DEFAULT_JOURNAL
from orchestrator.errors import JournalError
from orchestrator.journal import (
    AttemptRecord,
    Journal,
    ResumeClassification,
    RunRecord,
    TargetRecord,
)
from orchestrator.report import (
    json_report,
    junit_report,
    ndjson_events,
    text_report,
    write_atomic,
)


@dataclass
class RunView:
    """One run as the journal has it."""

    run: RunRecord
    targets: list[TargetRecord]
    attempts: list[AttemptRecord]
    classification: ResumeClassification


def register(sub: Any) -> None:
    """Add ``runs``, ``status`` and ``report``."""
    runs = sub.add_parser("runs", help="list the runs in the journal")
    add_journal_argument(runs)
    runs.set_defaults(handler=list_runs)

    status = sub.add_parser("status", help="show one run: states, failures, what is left")
    status.add_argument("run_id", metavar="RUN_ID")
    add_journal_argument(status)
    status.set_defaults(handler=show_status)

    report = sub.add_parser("report", help="write a run's report (text, JSON, JUnit, NDJSON)")
    report.add_argument("run_id", metavar="RUN_ID")
    report.add_argument(
        "--format", choices=("text", "json", "junit", "ndjson"), default="text", help="(text)"
    )
    report.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    add_journal_argument(report)
    report.set_defaults(handler=write_report)


def add_journal_argument(p: argparse.ArgumentParser) -> None:
    """Add ``--journal``."""
    p.add_argument(
        "--journal",
        default=str(DEFAULT_JOURNAL),
        metavar="PATH",
        help=f"the run journal (default {DEFAULT_JOURNAL})",
    )


def open_existing(path: str) -> Journal:
    """Open a journal that must already exist; raises ``JournalError`` otherwise."""
    if not Path(path).is_file():
        raise JournalError(f"no journal at {path} (runs are recorded where apply ran)")
    return Journal(path)


def read_run(path: str, run_id: str) -> RunView:
    """Return one run with its targets, attempts and resume classification.

    Raises ``JournalError`` for a missing journal or an unknown run.
    """

    async def read() -> RunView:
        journal = await anyio.to_thread.run_sync(open_existing, path)
        try:
            return RunView(
                await journal.run(run_id),
                await journal.targets(run_id),
                await journal.attempts(run_id),
                await journal.resume_classification(run_id),
            )
        finally:
            await journal.close()

    return anyio.run(read)


def list_runs(args: argparse.Namespace) -> int:
    """Print one line per run, newest last."""

    async def read() -> list[RunRecord]:
        journal = await anyio.to_thread.run_sync(open_existing, args.journal)
        try:
            return await journal.runs()
        finally:
            await journal.close()

    try:
        runs = anyio.run(read)
    except JournalError as exc:
        sys.stderr.write(f"{exc}\n")
        return exitcodes.USAGE
    if not runs:
        sys.stdout.write("no runs recorded\n")
        return exitcodes.OK
    sys.stdout.write(f"{'run':<24} {'status':<12} {'started (UTC)':<20} failures  manifest\n")
    for run in sorted(runs, key=lambda r: r.started_at):
        sys.stdout.write(
            f"{run.id:<24} {run.status.value:<12} {_when(run.started_at):<20} "
            f"{run.failures:>8}  {run.manifest_path}\n"
        )
    return exitcodes.OK


def show_status(args: argparse.Namespace) -> int:
    """Print a run's report and what resume would do with it."""
    try:
        view = read_run(args.journal, args.run_id)
    except JournalError as exc:
        sys.stderr.write(f"{exc}\n")
        return exitcodes.USAGE
    sys.stdout.write(text_report(view.run, view.targets, view.attempts, per_vps=False))
    c = view.classification
    left = len(c.pending) + len(c.skipped) + len(c.accepted) + len(c.unresolved)
    sys.stdout.write(
        f"\nresume would: send {len(c.pending) + len(c.skipped)}, check readiness of "
        f"{len(c.accepted)}, treat {len(c.unresolved)} as in doubt (intent without outcome)"
        + (f" — edis-fleet resume {view.run.id}\n" if left else "; nothing is left to do\n")
    )
    return exitcodes.OK


def write_report(args: argparse.Namespace) -> int:
    """Write the report of a run in the chosen format."""
    try:
        view = read_run(args.journal, args.run_id)
    except JournalError as exc:
        sys.stderr.write(f"{exc}\n")
        return exitcodes.USAGE
    run, targets, attempts = view.run, view.targets, view.attempts
    if args.format == "json":
        text = json.dumps(json_report(run, targets, attempts), indent=2, ensure_ascii=False) + "\n"
    elif args.format == "junit":
        text = junit_report(run, targets, attempts)
    elif args.format == "ndjson":
        text = ndjson_events(run, targets)
    else:
        text = text_report(run, targets, attempts)
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
