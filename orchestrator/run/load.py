"""Loading a run's inputs: the manifest checked, the selection applied, the plan built, the
account credentials read, and the read-only pre-flight against the account.

Every step collects problems rather than stopping at the first, like ``validate`` does; a
``Refusal`` carries them with the redactor that keeps secrets out of what is printed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.clock import SystemClock
from orchestrator.edis.client import EdisClient
from orchestrator.edis.session import SessionBook
from orchestrator.errors import ManifestError, SelectionError
from orchestrator.fleet import Fleet
from orchestrator.journal import JournalConfig
from orchestrator.manifest import ManifestReport, SelectedFleet, Selection, check_manifest, select
from orchestrator.run.execute import RunSpec
from orchestrator.run.options import Endpoint, LoadOptions, SelectionOptions
from orchestrator.run.plan import Plan, PlanEndpoint, build_plan, manifest_sha256
from orchestrator.run.preflight import Check, PreflightReport, preflight
from orchestrator.run.spec import ResumePoint, build_spec
from orchestrator.secrets import Redactor, Secret, read_source
from orchestrator.templates import CloudInitSchema, Templates

# User-data documents are hashed as rendered with this in place of the root password (see
# orchestrator.run.plan): generated passwords change every run, and a plan file must not carry a
# hash of a real password.
HASH_PLACEHOLDER = Secret("<root-password>")


@dataclass(frozen=True)
class Refusal:
    """Why a run's inputs were refused: every problem (and warning) about ``source`` (the
    manifest path as given); print them through ``redact``."""

    source: str
    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    redact: Redactor

    def error(self) -> ManifestError:
        """Return the problems as a ``ManifestError`` (redacted, warnings left out)."""
        return ManifestError([self.redact(p) for p in self.problems])


@dataclass(frozen=True)
class Loaded:
    """A manifest checked and a selection applied, without problems; ``source`` is the
    manifest path as given (messages quote it)."""

    source: str
    report: ManifestReport
    fleet: Fleet
    selection: Selection
    selected: SelectedFleet

    @property
    def redact(self) -> Redactor:
        """The redactor that knows every secret the manifest named."""
        return self.report.redactor

    def refusal(self, problems: Sequence[str], *, warnings: bool = False) -> Refusal:
        """Return ``problems`` as a refusal of this manifest (with its warnings if asked)."""
        shown = tuple(self.report.warnings) if warnings else ()
        return Refusal(self.source, tuple(problems), shown, self.redact)


@dataclass(frozen=True)
class Credentials:
    """The account's email and password, read from where the manifest says."""

    email: str
    password: Secret


def selection_from(options: SelectionOptions) -> Selection:
    """Parse the selection options. Raises ``SelectionError`` with every problem."""
    return Selection.from_args(
        only=options.only,
        limit=options.limit,
        exclude=options.exclude,
        include_protected=options.include_protected,
    )


def load_and_select(
    options: LoadOptions, env: Mapping[str, str], schema: CloudInitSchema | None
) -> Loaded | Refusal:
    """Check the manifest and apply the selection; return what was loaded, or every problem
    found (manifest and selection together)."""
    problems: list[str] = []
    selection: Selection | None = None
    try:
        selection = selection_from(options.selection)
    except SelectionError as exc:
        problems += exc.problems
    report = check_manifest(options.fleet, env, strict=options.strict, schema=schema)
    problems += report.problems
    selected = None
    if report.fleet is not None and selection is not None:
        try:
            selected = select(report.fleet, selection)
        except SelectionError as exc:
            problems += exc.problems
    if problems or report.fleet is None or selected is None or selection is None:
        return Refusal(options.fleet, tuple(problems), tuple(report.warnings), report.redactor)
    return Loaded(options.fleet, report, report.fleet, selection, selected)


def user_data_hashes(fleet: Fleet, selected: SelectedFleet) -> dict[str, str | None]:
    """Return the SHA-256 of each selected VPS's user data, rendered with a placeholder
    password. Raises ``ManifestError`` when a template fails."""
    templates = Templates.for_fleet(fleet)
    hashes: dict[str, str | None] = {}
    for entry in selected.vps:
        if entry.template is None:
            hashes[entry.id] = None
        else:
            hashes[entry.id] = templates.render(entry, HASH_PLACEHOLDER).sha256
    return hashes


def plan_for(loaded: Loaded, endpoint: Endpoint | None = None) -> Plan:
    """Return the plan of a loaded selection, checked against ``endpoint`` (default: the
    manifest's; bound into the plan's hash). Raises ``ManifestError`` when a template fails."""
    return build_plan(
        loaded.selected,
        loaded.selection,
        manifest_hash=manifest_sha256(loaded.fleet.path),
        user_data_hashes=user_data_hashes(loaded.fleet, loaded.selected),
        endpoint=PlanEndpoint.of(loaded.fleet.account, endpoint),
    )


def read_credentials(fleet: Fleet, env: Mapping[str, str]) -> Credentials:
    """Read the account's email and password. Raises ``KeyError`` (a variable not set),
    ``OSError`` (a file not readable) or ``ValueError`` (an empty value)."""
    account = fleet.account
    email = read_source(account.email, env)
    return Credentials(email, Secret(read_source(account.password, env)))


async def check_account(
    fleet: Fleet, selected: SelectedFleet, endpoint: Endpoint, credentials: Credentials
) -> PreflightReport:
    """Log in and check every selected VPS against the account (read-only requests).

    Raises ``AuthenticationError`` (the login was refused), ``ApiError`` (the account could
    not be read) or ``HostNotAllowedError``.
    """
    account = fleet.account
    async with EdisClient(
        session_url=endpoint.session_url or account.session_url,
        email=credentials.email,
        password=credentials.password,
        allowed_hosts=(*account.allowed_api_hosts, *endpoint.extra_api_hosts),
        ca_file=str(account.ca_file) if account.ca_file else None,
    ) as client:
        book = SessionBook(client, clock=SystemClock())
        checks = [Check(e.id, e.image, e.where) for e in selected.vps]
        return await preflight(checks, client=client, book=book)


def spec_for(
    loaded: Loaded,
    plan: Plan,
    env: Mapping[str, str],
    *,
    endpoint: Endpoint,
    journal: str | Path | JournalConfig | None,
    resume: ResumePoint | None = None,
    extra_options: Mapping[str, object] | None = None,
) -> RunSpec | Refusal:
    """Build the run of ``loaded`` and ``plan`` (``build_spec``: rendering user data, reading
    credentials), or return why it cannot be built, as a refusal of the manifest (nothing was
    sent)."""
    try:
        return build_spec(
            env,
            fleet=loaded.fleet,
            selected=loaded.selected,
            plan=plan,
            redact=loaded.redact,
            endpoint=endpoint,
            journal=journal,
            resume=resume,
            extra_options=extra_options,
        )
    except ManifestError as exc:
        return loaded.refusal(exc.problems)
    except (KeyError, OSError, ValueError) as exc:
        return loaded.refusal([f"credentials: {exc}"])
