"""Reports folded from journal records: text, JSON (with its schema), JUnit and NDJSON events."""

from orchestrator.report.formats import (
    NdjsonSink,
    json_report,
    junit_report,
    ndjson_events,
    text_report,
    write_atomic,
)
from orchestrator.report.summary import iso_time
from orchestrator.report.text import LABELS, duration

__all__ = [
    "LABELS",
    "NdjsonSink",
    "duration",
    "iso_time",
    "json_report",
    "junit_report",
    "ndjson_events",
    "text_report",
    "write_atomic",
]
