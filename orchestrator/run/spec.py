"""Building a ``RunSpec`` from a checked fleet and its plan: jobs, secrets, journal rows.

Shared by ``apply`` (a new run), ``resume`` (what is left of a run) and ``retry-failed``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import ManifestError
from orchestrator.fleet import Fleet, InDoubtPolicy, ReadinessMode, takes_cloud_init
from orchestrator.journal import JournalConfig, TargetSpec
from orchestrator.manifest import SelectedFleet
from orchestrator.run.execute import Account, RunSpec
from orchestrator.run.jobs import Job, RunSettings, WaveSpec
from orchestrator.run.options import Endpoint
from orchestrator.run.plan import Plan
from orchestrator.run.proof import ProofSpec, prepare_proof
from orchestrator.run.retry import RetryPolicy
from orchestrator.secrets import (
    GeneratedPassword,
    PasswordBook,
    Redactor,
    Secret,
    read_source,
    write_generated_passwords,
)
from orchestrator.templates import Templates


@dataclass
class ResumePoint:
    """Where a resumed run stands: which VPSes still need a send, which only a readiness
    check, which are in doubt since when, and the failures already counted per wave."""

    run_id: str
    pending: set[str] = field(default_factory=set)
    accepted: set[str] = field(default_factory=set)
    in_doubt_since: dict[str, float] = field(default_factory=dict)
    prior_failures: dict[int, int] = field(default_factory=dict)
    # When each accepted VPS was accepted (readiness deadlines count from it), the VPSes whose
    # one in-doubt resend was already sent, and when each wave became ready (soaks).
    accepted_at: dict[str, float] = field(default_factory=dict)
    resend_spent: set[str] = field(default_factory=set)
    wave_ready: dict[int, float] = field(default_factory=dict)
    # Readiness mode ssh: the run's host-key nonce, so the keys made again are those sent,
    # and the host keys the journal recorded just before each send (reconciliation).
    proof_nonce: str | None = None
    presend_keys: dict[str, str] = field(default_factory=dict)

    def wants(self, kvm_id: str) -> bool:
        """True when the VPS has anything left to do in this run."""
        return kvm_id in self.pending or kvm_id in self.accepted or kvm_id in self.in_doubt_since


def build_spec(
    env: Mapping[str, str],
    *,
    fleet: Fleet,
    selected: SelectedFleet,
    plan: Plan,
    redact: Redactor,
    endpoint: Endpoint,
    journal: str | Path | JournalConfig | None,
    resume: ResumePoint | None = None,
    extra_options: Mapping[str, object] | None = None,
) -> RunSpec:
    """Render the user data with the real passwords and describe the run (with ``resume``:
    only what is left of that run). ``extra_options`` are recorded with the run's options
    (e.g. ``retry_of``). ``journal`` is ``--journal`` (``None``: from ``env``, see
    ``JournalConfig.from_env``) or a ready ``JournalConfig``.

    Generated root passwords are written to their 0600 files here, before anything is sent.
    Raises ``ManifestError`` for a template that fails, ``KeyError``/``OSError``/``ValueError``
    for credentials that cannot be read.
    """
    account = fleet.account
    email = read_source(account.email, env)
    password = Secret(read_source(account.password, env))
    redact.add(password)
    passwords = PasswordBook(env)
    templates = Templates.for_fleet(fleet)
    # Host keys (readiness mode ssh) are derived from the account password and this nonce,
    # recorded with the run: a resumed run makes the same keys and recognises them on VPSes
    # reinstalled before the interruption (whoever holds the account password can reinstall
    # the VPS anyway). A run recorded without one gets a new nonce (and new keys).
    nonce = (resume.proof_nonce if resume is not None else None) or os.urandom(16).hex()
    rollout = fleet.rollout
    by_id = {e.id: e for e in selected.vps}
    waves: list[WaveSpec] = []
    targets: list[TargetSpec] = []
    hashes = {t.kvm_id: t.user_data_sha256 for t in plan.targets}
    for wave in plan.waves:
        jobs: list[Job] = []
        for position, kvm_id in enumerate(wave.kvm_ids):
            if resume is not None and not resume.wants(kvm_id):
                continue
            entry = by_id[kvm_id]
            root = passwords.root_password(entry)
            redact.add(root)
            user_data = None
            if entry.template is not None and takes_cloud_init(entry.image):
                user_data = Secret(templates.render(entry, root).text)
            r = entry.readiness
            proof: ProofSpec | None = None
            if r.mode is ReadinessMode.SSH:
                try:
                    # The private host key lives inside the user data only, which nothing
                    # prints or stores; it is not registered with the redactor (one regex
                    # over thousands of 400-character keys costs seconds per VPS).
                    user_data, proof, _ = prepare_proof(
                        user_data, r, seed=password, label=f"{nonce}:{kvm_id}"
                    )
                except ValueError as exc:
                    raise ManifestError([f"vps {kvm_id}: readiness mode ssh: {exc}"]) from None
            jobs.append(
                Job(
                    kvm_id=kvm_id,
                    wave=wave.index,
                    image=entry.image,
                    password=root,
                    user_data=user_data,
                    readiness=r.mode,
                    port=r.port,
                    deadline_s=r.deadline_s,
                    min_install_s=r.min_install_s,
                    install_window_s=rollout.in_doubt_window_s or r.deadline_s,
                    poll_interval_s=r.poll_interval_s,
                    vps_deadline_s=rollout.vps_deadline_s,
                    accepted_already=resume is not None and kvm_id in resume.accepted,
                    in_doubt_since=None if resume is None else resume.in_doubt_since.get(kvm_id),
                    proof=proof,
                    accepted_at=None if resume is None else resume.accepted_at.get(kvm_id),
                    resend_spent=resume is not None and kvm_id in resume.resend_spent,
                    presend_key=None if resume is None else resume.presend_keys.get(kvm_id),
                )
            )
            targets.append(
                TargetSpec(
                    kvm_id, wave.index, position, entry.image, entry.hostname, hashes[kvm_id]
                )
            )
        if jobs:
            waves.append(WaveSpec(wave.index, tuple(jobs), wave.failure_budget))
    _write_generated(selected, passwords)
    session_url = endpoint.session_url or account.session_url
    return RunSpec(
        account=Account(
            session_url=session_url,
            email=email,
            password=password,
            allowed_hosts=(*account.allowed_api_hosts, *endpoint.extra_api_hosts),
            ca_file=str(account.ca_file) if account.ca_file else None,
        ),
        waves=waves,
        settings=RunSettings(
            run_budget=plan.run_budget,
            soak_s=rollout.soak_s,
            in_doubt=_in_doubt_policy(fleet, waves),
            retry=RetryPolicy(),
        ),
        concurrency=rollout.concurrency,
        rate=rollout.rate_per_s,
        journal=journal_config(journal, env),
        manifest_path=str(fleet.path.resolve()),
        manifest_sha256=plan.manifest_sha256,
        plan_sha256=plan.content_hash,
        # The endpoint is recorded so resume/retry-failed talk to the same API (a rehearsal
        # on the simulator must never be resumed against the real account by accident).
        options={
            "selection": dict(plan.selection),
            "rollout": plan.rollout.to_json(),
            "session_url": session_url,
            "allow_api_host": list(endpoint.extra_api_hosts),
            # The recovery time objective (rollout.rto; apply --rto overrides it through
            # extra_options): reports and resume check the run against it.
            "rto_s": rollout.rto_s,
            **({"proof_nonce": nonce} if _proves(waves) else {}),
            **(extra_options or {}),
        },
        targets=targets if resume is None else (),
        run_id=None if resume is None else resume.run_id,
        prior_failures={} if resume is None else resume.prior_failures,
        wave_ready={} if resume is None else resume.wave_ready,
        hostnames={entry.id: entry.hostname for entry in selected.vps},
        redact=redact,
    )


def _proves(waves: list[WaveSpec]) -> bool:
    """Whether some VPS of the run gets a proof of reinstall (readiness mode ssh)."""
    return any(job.proof is not None for wave in waves for job in wave.jobs)


def _in_doubt_policy(fleet: Fleet, waves: list[WaveSpec]) -> InDoubtPolicy:
    """``rollout.in_doubt``, or ``reconcile`` when it was not written and some VPS's
    reinstall can be proven (readiness mode ssh; the others then behave as ``report``)."""
    rollout = fleet.rollout
    if rollout.in_doubt_default and _proves(waves):
        return InDoubtPolicy.RECONCILE
    return rollout.in_doubt


def _write_generated(selected: SelectedFleet, passwords: PasswordBook) -> None:
    by_file: dict[Path, dict[str, Secret]] = {}
    for entry in selected.vps:
        source = entry.root_password
        # Only the VPSes this run sends to got a password (a resume skips finished ones).
        if isinstance(source, GeneratedPassword) and entry.id in passwords.generated:
            by_file.setdefault(source.output, {})[entry.id] = passwords.generated[entry.id]
    for path, generated in by_file.items():
        write_generated_passwords(path, generated)


def journal_config(
    journal: str | Path | JournalConfig | None, env: Mapping[str, str]
) -> JournalConfig:
    """The run's journal: ``journal`` as is when it is a config, else built from ``env``."""
    if isinstance(journal, JournalConfig):
        return journal
    return JournalConfig.from_env(None if journal is None else str(journal), env)
