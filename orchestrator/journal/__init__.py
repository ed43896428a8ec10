"""The run journal: runs, targets, attempts and locks in SQLite (one machine) or PostgreSQL
(runners on several machines); intents made durable before every send, so a crash never leads
to a second reinstall of the same VPS; host-wide locks so two journals of one machine never
send to the same VPS."""

from orchestrator.journal.journal import (
    Journal,
    ResumeClassification,
    RunRecord,
    RunStatus,
    TargetRecord,
    TargetSpec,
)
from orchestrator.journal.location import DEFAULT_JOURNAL, JournalConfig
from orchestrator.journal.records import AttemptRecord
from orchestrator.journal.sink import JournalSink

__all__ = [
    "DEFAULT_JOURNAL",
    "AttemptRecord",
    "Journal",
    "JournalConfig",
    "JournalSink",
    "ResumeClassification",
    "RunRecord",
    "RunStatus",
    "TargetRecord",
    "TargetSpec",
]
