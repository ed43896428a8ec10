"""Printing shared by the subcommands: problems, refusals and warnings, always redacted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from orchestrator.cli import exitcodes

if TYPE_CHECKING:
    from orchestrator.run.load import Refusal


def fail(
    fleet: str,
    problems: Sequence[str],
    warnings: Sequence[str],
    redact: Callable[[str], str],
    err: TextIO,
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


def refuse(refusal: Refusal, err: TextIO) -> int:
    """Write a refusal's problems and warnings to ``err``, redacted; return exit code 2."""
    return fail(refusal.source, refusal.problems, refusal.warnings, refusal.redact, err)
