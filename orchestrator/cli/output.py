"""Printing shared by the subcommands: problems, refusals and warnings, always redacted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from orchestrator.cli import exitcodes
from orchestrator.errors import (
    ApiError,
    AuthenticationError,
    HostNotAllowedError,
    ManifestError,
    UsageError,
)
from orchestrator.secrets import Redactor

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


def account_failure(exc: Exception, secret: str, err: TextIO) -> int:
    """Write why a read of the account failed to ``err`` with ``secret`` (the account password)
    redacted; return exit code 3 for a refused login, else 2. Re-raises anything else."""
    redact = Redactor([secret])
    if isinstance(exc, AuthenticationError):
        err.write(redact(f"edis-fleet: {exc}\n"))
        return exitcodes.CREDENTIALS
    if isinstance(exc, ApiError | HostNotAllowedError):
        err.write(redact(f"edis-fleet: the account could not be read: {exc}\n"))
        return exitcodes.USAGE
    if isinstance(exc, ManifestError):
        for problem in exc.problems:
            err.write(redact(f"edis-fleet: {problem}\n"))
        return exitcodes.USAGE
    if isinstance(exc, UsageError | OSError):
        err.write(redact(f"edis-fleet: {exc}\n"))
        return exitcodes.USAGE
    raise exc


def counter(err: TextIO) -> Callable[[str, int, int], None] | None:
    """Return a progress printer for long account reads (``what: done/total`` rewritten in
    place), or ``None`` when ``err`` is not a terminal (logs get the result only). Call it
    with ``("", 0, 0)`` to clear the line."""
    if not err.isatty():
        return None

    def show(what: str, done: int, total: int) -> None:
        text = f"reading the account: {what} {done}/{total}" if total else ""
        err.write(f"\r{text:<60}\r" if not text else f"\r{text:<60}")
        err.flush()

    return show
