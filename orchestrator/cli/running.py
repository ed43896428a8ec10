"""Running reinstalls from the command line (apply, resume, retry-failed): the guard's
question, the live progress and event stream, the reports, and the exit code of the outcome.

Imported by the handlers only when they run, so registering the parsers stays cheap.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TextIO

import anyio

from orchestrator.cli import exitcodes
from orchestrator.cli.debug import explain
from orchestrator.cli.output import refuse
from orchestrator.cli.progress import Progress, choose_mode
from orchestrator.errors import (
    AuthenticationError,
    EdisFleetError,
    JournalError,
    LockedError,
    PreflightError,
)
from orchestrator.report import NdjsonSink, duration, recovery, text_report
from orchestrator.report.closing import closing_summary
from orchestrator.report.contract import Verdict
from orchestrator.run.boundary import RunCrashed, leaves
from orchestrator.run.eta import model_for
from orchestrator.run.execute import RunOutcome, RunSpec, execute
from orchestrator.run.guard import Verdict as GuardVerdict
from orchestrator.run.guard import check_confirmation, why_confirm
from orchestrator.run.load import Loaded, Refusal, spec_for
from orchestrator.run.options import Confirmation, Endpoint, OutputOptions
from orchestrator.run.plan import Plan
from orchestrator.run.reports import write_reports
from orchestrator.run.spec import ResumePoint


def build_and_run(
    loaded: Loaded,
    plan: Plan,
    env: Mapping[str, str],
    *,
    endpoint: Endpoint,
    output: OutputOptions,
    resume: ResumePoint | None = None,
    extra_options: Mapping[str, object] | None = None,
) -> int:
    """Build the run (rendering user data, reading credentials), run it, report; return the
    exit code. Problems building it are printed like manifest problems (exit 2)."""
    spec = spec_for(
        loaded,
        plan,
        env,
        endpoint=endpoint,
        journal=output.journal,
        resume=resume,
        extra_options=extra_options,
    )
    if isinstance(spec, Refusal):
        return refuse(spec, sys.stderr)
    return run_and_report(spec, output, env)


def run_and_report(spec: RunSpec, output: OutputOptions, env: Mapping[str, str]) -> int:
    """Attach progress and event sinks, run, write the reports; return the exit code."""
    hostnames = spec.hostnames or {t.kvm_id: t.hostname for t in spec.targets}
    sizes = {w.index: len(w.jobs) for w in spec.waves}
    progress = Progress(
        sum(sizes.values()),
        sizes,
        stream=sys.stderr,
        mode=choose_mode(sys.stderr, quiet=output.quiet, log_format=output.log_format, env=env),
        hostnames=hostnames,
        redact=spec.redact,
        eta=model_for(
            spec.waves, rate=spec.rate, concurrency=spec.concurrency, soak_s=spec.settings.soak_s
        ),
    )
    spec = replace(spec, progress=progress)
    events_file: TextIO | None = None
    if output.events:
        events_file = (
            sys.stdout if output.events == "-" else open(output.events, "w", encoding="utf-8")  # noqa: SIM115
        )
        sink = NdjsonSink(events_file, hostnames=hostnames, redact=spec.redact)
        spec = replace(spec, sinks=[*spec.sinks, sink])
    try:
        outcome = anyio_run(spec)
    finally:
        if events_file is not None and events_file is not sys.stdout:
            events_file.close()
    if isinstance(outcome, RunOutcome):
        for path, exc in write_reports(outcome, output, spec.redact):
            sys.stderr.write(f"cannot write {path}: {exc}\n")
    return finish(
        outcome,
        spec.redact,
        sys.stdout if output.events != "-" else sys.stderr,
        sys.stderr,
        quiet=output.quiet,
        details=output.details,
    )


class Interrupted(EdisFleetError):
    """The operator stopped the command before the run started sending."""


def anyio_run(spec: RunSpec) -> RunOutcome | BaseException:
    """Run ``execute`` on a fresh event loop; return its outcome or the error that stopped it
    (every error is returned, exception groups unwrapped to their one error; ``finish`` maps
    each to its exit code)."""
    try:
        return anyio.run(execute, spec)
    except KeyboardInterrupt:
        # Ctrl-C before the waves started (pre-flight, set-up): nothing was sent.
        return Interrupted("interrupted before the first reinstall; nothing was sent")
    except RunCrashed as exc:
        return exc
    except Exception as exc:  # the boundary: finish maps it
        found = leaves(exc)
        if len(found) == 1 and isinstance(found[0], EdisFleetError):
            return found[0]
        return exc


def finish(
    outcome: RunOutcome | BaseException,
    redact: Callable[[str], str],
    out: TextIO,
    err: TextIO,
    *,
    quiet: bool = False,
    details: bool = False,
) -> int:
    """Print how the run ended and return its exit code: the table of ``cli/exitcodes.py``,
    judged from the whole run for a recorded one. A recorded run ends with its verdict
    (``report.closing``; unless ``quiet``), after the per-VPS report with ``details``."""
    if isinstance(outcome, RunOutcome):
        return _finished(outcome, redact, out, err, quiet=quiet, details=details)
    if isinstance(outcome, Interrupted):
        err.write(f"{outcome}\n")
        return exitcodes.INTERRUPTED
    if isinstance(outcome, RunCrashed):
        err.write(outcome.message(redact))
        explain(outcome.cause, err)
        return exitcodes.CRASHED
    if isinstance(outcome, AuthenticationError):
        err.write(redact(f"credentials refused: {outcome}\n"))
        return exitcodes.CREDENTIALS
    if isinstance(outcome, PreflightError):
        err.write(f"pre-flight failed, nothing was sent ({len(outcome.problems)} problems):\n")
        err.writelines(redact(p) + "\n" for p in outcome.problems)
        return exitcodes.USAGE
    if isinstance(outcome, LockedError):
        # Another live run holds some of these VPSes; nothing was sent. Retry later.
        err.write(redact(f"busy: {outcome}\n"))
        return exitcodes.BUSY
    if isinstance(outcome, JournalError):
        err.write(redact(f"refused, nothing was sent: {outcome}\n"))
        return exitcodes.USAGE
    if isinstance(outcome, EdisFleetError):
        err.write(redact(f"refused, nothing was sent: {outcome}\n"))
        return exitcodes.USAGE
    # Not one of ours, before the run was recorded: an internal error; nothing was sent.
    err.write(redact(f"internal error before the first reinstall (nothing was sent): {outcome}\n"))
    explain(outcome, err)
    return exitcodes.CRASHED


def _finished(
    outcome: RunOutcome,
    redact: Callable[[str], str],
    out: TextIO,
    err: TextIO,
    *,
    quiet: bool,
    details: bool = False,
) -> int:
    """Report a run that ran to its end (or was interrupted, or aborted) and judge it: the
    notes on stderr first, the verdict last (the last lines on screen)."""
    result, tally = outcome.result, outcome.tally
    if not quiet and details:
        report = text_report(outcome.run, outcome.targets, outcome.attempts, redact=redact)
        out.write(report.rstrip("\n") + "\n")
        out.flush()
    verdict = tally.verdict
    if tally.in_doubt:
        err.write(
            f"{tally.in_doubt} VPS(es) in doubt: their reinstall may have run; check them "
            f"(edis-fleet status {outcome.run_id})\n"
        )
    if verdict is Verdict.INTERRUPTED or (result.interrupted and verdict is Verdict.IN_DOUBT):
        err.write(f"interrupted; resume with: edis-fleet resume {outcome.run_id}\n")
    if result.aborted is not None:
        err.write(f"aborted: {result.aborted}\n")
    if verdict is Verdict.RTO_MISSED:
        rec = recovery(outcome.run, outcome.targets)
        err.write(
            f"RTO missed: recovery took {duration(rec.recovery_s)} (first send → last ready), "
            f"over the RTO of {duration(rec.rto_s)}\n"
        )
    if not quiet:
        err.flush()
        out.write(
            closing_summary(
                outcome.run, outcome.targets, tally, outcome.attempts,
                redact=redact, aborted=result.aborted,
            )
        )  # fmt: skip
        out.flush()
    code = tally.exit_code
    return exitcodes.CRASHED if code is None else code


def guard(
    loaded: Loaded, plan: Plan, confirm: Confirmation, stdin: TextIO, err: TextIO
) -> int | None:
    """Return None when the run may go ahead, or the exit code that refuses it.

    A large or protected run needs ``--yes`` or ``--confirm-count`` equal to the blast radius
    (``orchestrator.run.guard``); on a terminal the operator is shown the targets and asked to
    type the count.
    """
    radius = plan.blast_radius
    verdict = check_confirmation(plan, confirm)
    if verdict is GuardVerdict.MISMATCH:
        err.write(
            f"--confirm-count {confirm.count} does not match: this run would wipe "
            f"{radius} VPS(es). Nothing was sent.\n"
        )
        return exitcodes.USAGE
    if verdict is GuardVerdict.GO:
        return None
    why = why_confirm(plan)
    if not stdin.isatty():
        err.write(
            f"{why}: pass --yes or --confirm-count {radius} to go ahead "
            "(no terminal to ask). Nothing was sent.\n"
        )
        return exitcodes.USAGE
    err.write(f"{why}:\n")
    for entry in loaded.selected.vps:
        mark = "  [protected]" if entry.protected else ""
        err.write(f"  {entry.id}  {entry.hostname}  {entry.image}{mark}\n")
    err.write(f"type {radius} to wipe them, anything else to stop: ")
    err.flush()
    answer = stdin.readline().strip()
    if answer != str(radius):
        err.write("not confirmed. Nothing was sent.\n")
        return exitcodes.USAGE
    return None
