"""The run journal: runs, targets, attempts and locks in SQLite; intents made durable before
every send, so a crash never leads to a second reinstall of the same VPS."""

from orchestrator.journal.journal import (
    Journal,
    ResumeClassification,
    RunRecord,
    RunStatus,
    TargetRecord,
    TargetSpec,
)
from orchestrator.journal.schema import AttemptRecord
from orchestrator.journal.sink import JournalSink

__all__ = [
    "AttemptRecord",
    "Journal",
    "JournalSink",
    "ResumeClassification",
    "RunRecord",
    "RunStatus",
    "TargetRecord",
    "TargetSpec",
]
