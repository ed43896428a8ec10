"""Reading recorded runs back from the journal, and reloading one to resume or retry it.

resume continues a run that stopped: VPSes whose reinstall was accepted are never sent again
(those not confirmed back get their readiness check), VPSes never sent continue in their waves,
VPSes with an intent and no outcome are in doubt, and the failures already counted carry over
into the budgets. retry-failed is a new run over the VPSes that *failed*. Both reload the run's
manifest with the run's selection and endpoint, and refuse when the manifest or a rendered
user-data document changed since the run, unless forced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
import anyio.to_thread

from orchestrator.errors import JournalError, ManifestError
from orchestrator.journal import (
    AttemptRecord,
    Journal,
    JournalConfig,
    ResumeClassification,
    RunRecord,
    RunStatus,
    TargetRecord,
)
from orchestrator.model import TargetState
from orchestrator.report import Tally, judge, recovery
from orchestrator.run.load import Loaded, Refusal, load_and_select, plan_for
from orchestrator.run.options import Endpoint, LoadOptions, SelectionOptions
from orchestrator.run.plan import Plan, as_one_wave
from orchestrator.run.spec import ResumePoint
from orchestrator.templates import CloudInitSchema


@dataclass(frozen=True)
class RunView:
    """One run as the journal has it."""

    run: RunRecord
    targets: list[TargetRecord]
    attempts: list[AttemptRecord]
    classification: ResumeClassification

    @property
    def tally(self) -> Tally:
        """The run judged as a whole (``report.contract``)."""
        return recovery(self.run, self.targets).tally

    @property
    def left(self) -> list[str]:
        """The VPSes resume would still work on (send, check readiness, treat in doubt, or
        resend after the install window, as the run decided)."""
        c = self.classification
        left = [*c.pending, *c.skipped, *c.accepted, *c.unresolved, *self.resend_owed]
        return left + self.reconcilable

    @property
    def reconcilable(self) -> list[str]:
        """In-doubt VPSes of a run whose reinstalls can be proven (readiness mode ssh: the
        run recorded its host-key nonce) and whose resend is not owed: resume looks at each
        again (``run/reconcile.py``)."""
        if not isinstance(self.run.options.get("proof_nonce"), str):
            return []
        owed = set(self.resend_owed)
        return [k for k in self.classification.in_doubt if k not in owed]

    @property
    def resend_owed(self) -> list[str]:
        """In-doubt VPSes whose resend the run decided and never sent (stopped during the
        install window): resume serves the rest of that window, then resends once."""
        return [
            t.kvm_id
            for t in self.targets
            if t.state is TargetState.IN_DOUBT
            and t.resend_decided_at is not None
            and t.resent_at is None
        ]


@dataclass(frozen=True)
class Reloaded:
    """A run's manifest loaded again as the run selected it, its plan now, and the endpoint
    the run talked to (unless told otherwise)."""

    loaded: Loaded
    plan: Plan
    endpoint: Endpoint
    # Recorded with the new run (``retry_of`` for a retry-failed run).
    options: Mapping[str, str] = field(default_factory=dict)
    # Where the run stands (``resume``): what is left to send, check or settle.
    resume: ResumePoint | None = None


def open_existing(path: str | Path | JournalConfig) -> Journal:
    """Open a journal that must already exist (a SQLite file, or any PostgreSQL database:
    a new one is an empty journal); raises ``JournalError`` otherwise."""
    config = path if isinstance(path, JournalConfig) else JournalConfig(str(path))
    if not config.is_url and not config.path.is_file():
        raise JournalError(f"no journal at {config.shown} (runs are recorded where apply ran)")
    return Journal(config)


async def read_run(path: str | Path | JournalConfig, run_id: str) -> RunView:
    """Return one run with its targets, attempts and resume classification.

    Raises ``JournalError`` for a missing journal or an unknown run.
    """
    journal = await anyio.to_thread.run_sync(open_existing, path)
    try:
        return RunView(
            await journal.run(run_id),
            await journal.targets(run_id),
            await journal.attempts(run_id),
            await journal.resume_classification(run_id),
        )
    finally:
        await journal.close()


async def settle(path: str | Path | JournalConfig, view: RunView) -> Tally:
    """Judge a run with nothing left to do. One recorded ``interrupted`` or ``crashed`` after
    its last VPS was done is judged as completed and its status recorded so (``runs`` then
    says what the run came to); any other is judged as recorded. Raises ``JournalError``."""
    if view.left or view.run.status not in (RunStatus.INTERRUPTED, RunStatus.CRASHED):
        return view.tally
    rec = recovery(replace(view.run, status=RunStatus.DONE), view.targets)
    tally = judge(RunStatus.DONE, [t.state for t in view.targets], rto_met=rec.rto_met)
    journal = await anyio.to_thread.run_sync(open_existing, path)
    try:
        await journal.finish_run(view.run.id, tally.status)
    finally:
        await journal.close()
    return tally


async def list_runs(path: str | Path | JournalConfig) -> list[RunRecord]:
    """Return every run in the journal, oldest first. Raises ``JournalError``."""
    journal = await anyio.to_thread.run_sync(open_existing, path)
    try:
        runs = await journal.runs()
    finally:
        await journal.close()
    return sorted(runs, key=lambda r: r.started_at)


async def list_judged(path: str | Path | JournalConfig) -> list[tuple[RunRecord, Tally]]:
    """Return every run, oldest first, each judged as a whole (``report.contract``: the same
    counts, verdict and exit code as ``status``, ``report`` and the run's own exit code).
    Raises ``JournalError``."""
    journal = await anyio.to_thread.run_sync(open_existing, path)
    try:
        runs = sorted(await journal.runs(), key=lambda r: r.started_at)
        return [(run, recovery(run, await journal.targets(run.id)).tally) for run in runs]
    finally:
        await journal.close()


def resume_point(view: RunView) -> ResumePoint:
    """Return where a run stands, for ``build_spec(resume=...)``."""
    c = view.classification
    by_id = {t.kvm_id: t for t in view.targets}
    doubts = [*c.unresolved, *view.resend_owed, *view.reconcilable]
    return ResumePoint(
        run_id=view.run.id,
        pending={*c.pending, *c.skipped},
        accepted=set(c.accepted),
        # The install window is counted from the recorded send.
        in_doubt_since={k: by_id[k].sent_at or by_id[k].queued_at for k in doubts},
        prior_failures=failures_per_wave(view),
        accepted_at={k: t for k in c.accepted if (t := by_id[k].accepted_at) is not None},
        resend_spent={t.kvm_id for t in view.targets if t.resent_at is not None},
        wave_ready=dict(view.run.wave_ready),
        proof_nonce=_text_or_none(view.run.options.get("proof_nonce")),
        presend_keys={t.kvm_id: t.presend_key for t in view.targets if t.presend_key is not None},
    )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def reload_left(
    view: RunView,
    env: Mapping[str, str],
    *,
    endpoint: Endpoint,
    force: bool = False,
    fleet: str | None = None,
) -> Reloaded | Refusal:
    """What ``resume`` continues: the VPSes the run has left (``view.left``), reloaded as
    ``reload_run`` does with the protected ones the run selected, and where the run stands.
    Refuses like ``reload_run``."""
    reloaded = reload_run(
        view, view.left, env, endpoint=endpoint, force=force, include_protected=True, fleet=fleet
    )
    if isinstance(reloaded, Refusal):
        return reloaded
    return replace(reloaded, resume=resume_point(view))


def reload_failed(
    view: RunView,
    env: Mapping[str, str],
    *,
    endpoint: Endpoint,
    force: bool = False,
    fleet: str | None = None,
) -> Reloaded | Refusal:
    """What ``retry-failed`` sends: the VPSes that failed in the run (never the in-doubt
    ones), reloaded as ``reload_run`` does, as one wave under the run's failure budget (they
    already had their canary), recorded as a retry of the run. Refuses like ``reload_run``."""
    failed = list(view.classification.failed)
    reloaded = reload_run(
        view, failed, env, endpoint=endpoint, force=force, limit=failed, fleet=fleet
    )
    if isinstance(reloaded, Refusal):
        return reloaded
    return replace(reloaded, plan=as_one_wave(reloaded.plan), options={"retry_of": view.run.id})


def reload_run(
    view: RunView,
    kvm_ids: Sequence[str],
    env: Mapping[str, str],
    *,
    endpoint: Endpoint,
    force: bool = False,
    include_protected: bool = False,
    limit: Iterable[str] | None = None,
    fleet: str | None = None,
) -> Reloaded | Refusal:
    """Load the run's manifest with the run's selection (narrowed to ``limit``; with
    ``include_protected`` for a resume: what the run selected, it may finish) and refuse when
    it or the user-data of ``kvm_ids`` changed since the run, unless ``force``. ``fleet`` is
    the manifest when it is not where the run recorded it (another runner's checkout); its
    content must still match the run's."""
    selection = SelectionOptions.from_recorded(view.run.options.get("selection") or {})
    if include_protected:
        selection = replace(selection, include_protected=True)
    if limit is not None:
        selection = replace(selection, limit=(",".join(limit),))
    where = fleet or view.run.manifest_path
    options = LoadOptions(fleet=where, selection=selection, strict=False)
    loaded = load_and_select(options, env, CloudInitSchema.find())
    if isinstance(loaded, Refusal):
        return loaded
    try:
        plan = plan_for(loaded)
    except ManifestError as exc:
        return loaded.refusal(exc.problems)
    refused = changed(view, plan, kvm_ids, force=force)
    if refused:
        return loaded.refusal(refused)
    return Reloaded(loaded, plan, endpoint.or_recorded(view.run.options))


def changed(view: RunView, plan: Plan, kvm_ids: Iterable[str], *, force: bool) -> list[str]:
    """Return why the run's inputs changed (nothing when they did not, or with ``force``)."""
    if force:
        return []
    problems: list[str] = []
    if plan.manifest_sha256 != view.run.manifest_sha256:
        problems.append(
            f"{view.run.manifest_path} changed since run {view.run.id}; pass --force to go "
            "ahead with the manifest as it is now"
        )
    recorded = {t.kvm_id: t.user_data_sha256 for t in view.targets}
    now = {t.kvm_id: t.user_data_sha256 for t in plan.targets}
    for kvm_id in kvm_ids:
        if kvm_id not in now:
            problems.append(f"{kvm_id} is no longer selected by the manifest")
        elif now[kvm_id] != recorded.get(kvm_id):
            problems.append(
                f"{kvm_id}: its rendered user-data changed since run {view.run.id}; "
                "pass --force to send the new one"
            )
    return problems


def failures_per_wave(view: RunView) -> dict[int, int]:
    """Return the failures (failed or in doubt) the run already counted, per wave."""
    # An owed resend is not a failure yet: it is counted if it ends failed or in doubt.
    owed = set(view.resend_owed)
    failed = {*view.classification.failed, *view.classification.in_doubt} - owed
    counts: dict[int, int] = {}
    for t in view.targets:
        if t.kvm_id in failed:
            counts[t.wave] = counts.get(t.wave, 0) + 1
    return counts
