"""A run's reports from its journal records: rendered in one format, or written to the files
the run's output options name."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from orchestrator.journal import AttemptRecord, RunRecord, TargetRecord
from orchestrator.report import (
    html_report,
    json_report,
    junit_report,
    markdown_report,
    ndjson_events,
    text_report,
    write_atomic,
)
from orchestrator.run.execute import RunOutcome
from orchestrator.run.options import OutputOptions, ReportFormat
from orchestrator.run.proof import known_hosts_text


def render_report(
    run: RunRecord,
    targets: list[TargetRecord],
    attempts: list[AttemptRecord],
    fmt: ReportFormat = ReportFormat.TEXT,
) -> str:
    """Return the report of a run in ``fmt`` (text, JSON, JUnit XML, NDJSON events, Markdown
    or the HTML drill record)."""
    if fmt is ReportFormat.JSON:
        data = json_report(run, targets, attempts)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt is ReportFormat.JUNIT:
        return junit_report(run, targets, attempts)
    if fmt is ReportFormat.NDJSON:
        return ndjson_events(run, targets)
    if fmt is ReportFormat.MARKDOWN:
        return markdown_report(run, targets, attempts)
    if fmt is ReportFormat.HTML:
        return html_report(run, targets, attempts)
    return text_report(run, targets, attempts)


def write_reports(
    outcome: RunOutcome, output: OutputOptions, redact: Callable[[str], str]
) -> list[tuple[str, OSError]]:
    """Write the JSON and JUnit reports and the known_hosts file ``output`` asks for; return
    the files that could not be written, with why (not fatal: the journal holds everything
    and a report can be written again from it)."""
    run, targets, attempts = outcome.run, outcome.targets, outcome.attempts
    failed: list[tuple[str, OSError]] = []
    if output.report_json:
        data = json_report(run, targets, attempts, redact=redact)
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        _write(output.report_json, text, failed)
    if output.junit:
        _write(output.junit, junit_report(run, targets, attempts, redact=redact), failed)
    if output.known_hosts:
        # The journal's facts; a VPS recorded before schema version 3 has it in its reason.
        text = "".join(
            f"{t.known_hosts}\n" if t.known_hosts else known_hosts_text([t.reason]) for t in targets
        )
        _write(output.known_hosts, text, failed)
    return failed


def _write(path: str, text: str, failed: list[tuple[str, OSError]]) -> None:
    try:
        write_atomic(Path(path), text)
    except OSError as exc:
        failed.append((path, exc))
