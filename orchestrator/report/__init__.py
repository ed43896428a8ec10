"""Reports folded from journal records: text, JSON (with its schema), JUnit, NDJSON events,
Markdown (CI summaries, chat) and the HTML drill record; the run's recovery time and verdict."""

from orchestrator.report.contract import Tally, judge
from orchestrator.report.formats import (
    NdjsonSink,
    json_report,
    junit_report,
    ndjson_events,
    text_report,
    write_atomic,
)
from orchestrator.report.html import html_report
from orchestrator.report.markdown import markdown_report
from orchestrator.report.recovery import Recovery, Verdict, recovery, verdict
from orchestrator.report.summary import iso_time
from orchestrator.report.text import LABELS, duration

__all__ = [
    "LABELS",
    "NdjsonSink",
    "Recovery",
    "Tally",
    "Verdict",
    "duration",
    "html_report",
    "iso_time",
    "json_report",
    "judge",
    "junit_report",
    "markdown_report",
    "ndjson_events",
    "recovery",
    "text_report",
    "verdict",
    "write_atomic",
]
