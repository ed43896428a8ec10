"""What ``validate``, ``plan``, ``apply``, ``resume``, ``retry-failed``, ``runs`` and ``report``
do, as functions for Python callers (re-exported by ``orchestrator``).

``validate`` is a plain function (it is offline); everything that talks to the API or the
journal is a coroutine: run it with ``asyncio.run(...)`` or ``anyio.run(...)``, or await it in
your own event loop. Nothing here prints, reads ``os.environ`` unless ``env`` is left out, or
asks a question: problems are raised from the ``orchestrator.errors`` tree, with secrets
redacted, and a large or protected run needs an explicit ``Confirmation``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.errors import ManifestError, PreflightError, UsageError
from orchestrator.fleet import Fleet
from orchestrator.journal import RunRecord
from orchestrator.manifest import SelectedFleet
from orchestrator.model import EventSink
from orchestrator.run.execute import RunOutcome, execute
from orchestrator.run.guard import Verdict, check_confirmation, why_confirm
from orchestrator.run.load import (
    Credentials,
    Loaded,
    Refusal,
    check_account,
    load_and_select,
    plan_for,
    read_credentials,
    spec_for,
)
from orchestrator.run.options import (
    DEFAULT_JOURNAL,
    Confirmation,
    Endpoint,
    LoadOptions,
    ReportFormat,
    SelectionOptions,
)
from orchestrator.run.plan import Plan
from orchestrator.run.preflight import PreflightReport
from orchestrator.run.reports import render_report
from orchestrator.run.resume import list_runs as _list_runs
from orchestrator.run.resume import read_run, reload_failed, reload_left, settle
from orchestrator.run.spec import ResumePoint
from orchestrator.templates import DEFAULT_SCHEMA_DOCUMENTS, CloudInitSchema, TemplateReport

PathLike = str | os.PathLike[str]
# The defaults (frozen, so one instance serves every call): everything not protected, the
# endpoint the manifest names, no say-so for a large or protected run.
ALL = SelectionOptions()
MANIFEST_ENDPOINT = Endpoint()
UNCONFIRMED = Confirmation()


@dataclass(frozen=True)
class Validation:
    """A manifest that passed ``validate``: the fleet, the selected VPSes, the warnings and
    what the template check did (``None`` when the manifest has no templates)."""

    fleet: Fleet
    selected: SelectedFleet
    warnings: tuple[str, ...]
    templates: TemplateReport | None


@dataclass(frozen=True)
class PlanCheck:
    """What ``plan`` found: the plan (``plan.to_json()`` is the plan file), what pre-flight
    learned from the account, and the manifest's warnings."""

    plan: Plan
    preflight: PreflightReport
    warnings: tuple[str, ...]


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    return dict(os.environ if env is None else env)


def _load(
    fleet: PathLike,
    selection: SelectionOptions,
    strict: bool,
    env: Mapping[str, str],
    schema: CloudInitSchema | None,
) -> Loaded:
    options = LoadOptions(fleet=os.fspath(fleet), selection=selection, strict=strict)
    loaded = load_and_select(options, env, schema)
    if isinstance(loaded, Refusal):
        raise loaded.error()
    return loaded


def _plan(loaded: Loaded, endpoint: Endpoint = MANIFEST_ENDPOINT) -> Plan:
    try:
        return plan_for(loaded, endpoint)
    except ManifestError as exc:
        raise loaded.refusal(exc.problems).error() from None


def validate(
    fleet: PathLike,
    *,
    selection: SelectionOptions = ALL,
    strict: bool = False,
    schema: bool = True,
    schema_limit: int = DEFAULT_SCHEMA_DOCUMENTS,
    env: Mapping[str, str] | None = None,
) -> Validation:
    """Check a manifest, its templates and the selection offline (``edis-fleet validate``).

    ``schema`` runs ``cloud-init schema`` on at most ``schema_limit`` rendered documents when
    cloud-init is installed. ``env`` holds the variables the manifest names (default:
    ``os.environ``). Raises ``ManifestError`` with every problem (manifest and selection).
    """
    found = CloudInitSchema.find(max_documents=schema_limit) if schema else None
    loaded = _load(fleet, selection, strict, _env(env), found)
    report = loaded.report
    return Validation(loaded.fleet, loaded.selected, tuple(report.warnings), report.templates)


async def plan(
    fleet: PathLike,
    *,
    selection: SelectionOptions = ALL,
    strict: bool = False,
    endpoint: Endpoint = MANIFEST_ENDPOINT,
    env: Mapping[str, str] | None = None,
) -> PlanCheck:
    """Validate, then check every selected VPS against the account with read-only requests,
    and return the plan (``edis-fleet plan``). Nothing is wiped.

    Raises ``ManifestError`` (manifest, selection, templates, unreadable credentials),
    ``AuthenticationError`` (the login was refused), ``PreflightError`` (a VPS is missing,
    suspended or not offered its image), ``ApiError`` or ``HostNotAllowedError``.
    """
    environ = _env(env)
    loaded = _load(fleet, selection, strict, environ, CloudInitSchema.find())
    the_plan = _plan(loaded, endpoint)
    credentials = _credentials(loaded, environ)
    found = await check_account(loaded.fleet, loaded.selected, endpoint, credentials)
    if not found.ok:
        raise PreflightError([loaded.redact(p) for p in found.problems])
    return PlanCheck(the_plan, found, tuple(loaded.report.warnings))


async def apply(
    fleet: PathLike,
    *,
    selection: SelectionOptions = ALL,
    strict: bool = False,
    endpoint: Endpoint = MANIFEST_ENDPOINT,
    journal: PathLike = DEFAULT_JOURNAL,
    confirm: Confirmation = UNCONFIRMED,
    plan_hash: str | None = None,
    sinks: Sequence[EventSink] = (),
    env: Mapping[str, str] | None = None,
    rto_s: float | None = None,
) -> RunOutcome:
    """Reinstall the selected VPSes in waves (``edis-fleet apply``). WIPES DISKS.

    More than ten VPSes, or any protected one, needs ``confirm`` (``yes=True`` or ``count``
    equal to the blast radius). With ``plan_hash`` (a plan's ``content_hash``) the run is
    refused when the manifest, its templates or the selection changed since that plan.
    ``sinks`` watch every state change. ``rto_s`` (seconds) replaces the manifest's
    ``rollout.rto`` and is recorded with the run (``orchestrator.report.recovery`` judges it).
    Returns the outcome once the run ended, whatever the VPSes' fates (see ``outcome.result``
    and ``outcome.status``).

    Raises before anything is sent: ``ManifestError`` (manifest, selection, templates,
    credentials), ``UsageError`` (not confirmed, or a stale plan), ``PreflightError``,
    ``AuthenticationError``, ``LockedError`` (another run holds some VPSes), ``JournalError``
    or ``HostNotAllowedError``.
    """
    environ = _env(env)
    loaded = _load(fleet, selection, strict, environ, CloudInitSchema.find())
    the_plan = _plan(loaded, endpoint)
    if plan_hash is not None and plan_hash != the_plan.content_hash:
        raise UsageError(
            "the plan is stale: the manifest, its templates, the selection or the endpoint "
            f"({the_plan.endpoint.describe()}) changed since it was made"
        )
    _confirmed(the_plan, confirm)
    rto = {"rto_s": rto_s} if rto_s is not None else None
    return await _run(
        loaded, the_plan, environ, endpoint=endpoint, journal=journal, sinks=sinks,
        extra_options=rto,
    )  # fmt: skip


async def resume(
    run_id: str,
    *,
    journal: PathLike = DEFAULT_JOURNAL,
    endpoint: Endpoint = MANIFEST_ENDPOINT,
    force: bool = False,
    sinks: Sequence[EventSink] = (),
    env: Mapping[str, str] | None = None,
) -> RunOutcome | None:
    """Continue a run that stopped, sending nothing twice (``edis-fleet resume``); return
    ``None`` when it has nothing left to do (a run recorded interrupted or crashed after its
    last VPS was done is then settled: ``resume.settle``).

    The run's manifest is loaded again with the run's selection and endpoint (``endpoint``
    overrides it). Raises ``JournalError`` (no journal, unknown run), ``ManifestError`` (the
    manifest or a VPS's user data changed since the run, unless ``force``), and what
    ``apply`` raises before sending.
    """
    environ = _env(env)
    view = await read_run(os.fspath(journal), run_id)
    if not view.left:
        await settle(os.fspath(journal), view)
        return None
    reloaded = reload_left(view, environ, endpoint=endpoint, force=force)
    if isinstance(reloaded, Refusal):
        raise reloaded.error()
    return await _run(
        reloaded.loaded,
        reloaded.plan,
        environ,
        endpoint=reloaded.endpoint,
        journal=journal,
        sinks=sinks,
        resume=reloaded.resume,
    )


async def retry_failed(
    run_id: str,
    *,
    journal: PathLike = DEFAULT_JOURNAL,
    endpoint: Endpoint = MANIFEST_ENDPOINT,
    force: bool = False,
    confirm: Confirmation = UNCONFIRMED,
    sinks: Sequence[EventSink] = (),
    env: Mapping[str, str] | None = None,
) -> RunOutcome | None:
    """Start a new run over the VPSes that failed in ``run_id`` (never the in-doubt ones);
    return ``None`` when none failed (``edis-fleet retry-failed``). Raises as ``resume``, and
    ``UsageError`` when a large or protected retry is not confirmed."""
    environ = _env(env)
    view = await read_run(os.fspath(journal), run_id)
    if not view.classification.failed:
        return None
    reloaded = reload_failed(view, environ, endpoint=endpoint, force=force)
    if isinstance(reloaded, Refusal):
        raise reloaded.error()
    _confirmed(reloaded.plan, confirm)
    return await _run(
        reloaded.loaded,
        reloaded.plan,
        environ,
        endpoint=reloaded.endpoint,
        journal=journal,
        sinks=sinks,
        extra_options=reloaded.options,
    )


async def run_report(
    run_id: str,
    *,
    journal: PathLike = DEFAULT_JOURNAL,
    format: ReportFormat = ReportFormat.TEXT,
) -> str:
    """Return the report of a recorded run: text, JSON, JUnit XML, NDJSON events, Markdown
    or the HTML drill record (``edis-fleet report``). Raises ``JournalError`` for a missing
    journal or an unknown run."""
    view = await read_run(os.fspath(journal), run_id)
    return render_report(view.run, view.targets, view.attempts, ReportFormat(format))


async def runs(journal: PathLike = DEFAULT_JOURNAL) -> list[RunRecord]:
    """Return the runs in the journal, oldest first (``edis-fleet runs``). Raises
    ``JournalError`` when there is no journal."""
    return await _list_runs(os.fspath(journal))


def _credentials(loaded: Loaded, env: Mapping[str, str]) -> Credentials:
    try:
        credentials = read_credentials(loaded.fleet, env)
    except (KeyError, OSError, ValueError) as exc:
        raise loaded.refusal([f"account credentials: {exc}"]).error() from None
    loaded.redact.add(credentials.password)
    return credentials


def _confirmed(the_plan: Plan, confirm: Confirmation) -> None:
    verdict = check_confirmation(the_plan, confirm)
    if verdict is Verdict.MISMATCH:
        raise UsageError(
            f"confirm count {confirm.count} does not match: this run would wipe "
            f"{the_plan.blast_radius} VPS(es)"
        )
    if verdict is Verdict.ASK:
        raise UsageError(
            f"{why_confirm(the_plan)}: pass confirm=Confirmation(yes=True) or "
            f"Confirmation(count={the_plan.blast_radius}) to go ahead"
        )


async def _run(
    loaded: Loaded,
    the_plan: Plan,
    env: Mapping[str, str],
    *,
    endpoint: Endpoint,
    journal: PathLike,
    sinks: Sequence[EventSink],
    resume: ResumePoint | None = None,
    extra_options: Mapping[str, object] | None = None,
) -> RunOutcome:
    spec = spec_for(
        loaded,
        the_plan,
        env,
        endpoint=endpoint,
        journal=Path(journal),
        resume=resume,
        extra_options=extra_options,
    )
    if isinstance(spec, Refusal):
        raise spec.error()
    return await execute(replace(spec, sinks=[*spec.sinks, *sinks]))
