"""``SelectedFleet`` + what pre-flight learned → ``Plan``: waves, budgets, ETA and a content hash.

A plan is what ``apply`` will do, written down before it does it. Its ``content_hash`` binds
the manifest file, the selection, every target (id, hostname, image, wave) and the SHA-256 of
every rendered user-data document, so ``apply --plan`` can refuse a plan whose inputs changed.

User-data hashes are taken over a render made with a fixed placeholder in place of the root
password: a generated password differs on every run and must not make a plan stale, and a
hash of a document holding a real password would be a brute-force target in a plan file.

Failure budgets: a wave's budget is the number of VPSes of that wave that may end *failed* or
*in doubt* without stopping the run; the run budget likewise over the whole selection. The
failure that goes one past a budget trips it: no new reinstall starts after that, and the
reinstalls already sent (at most the concurrency) still finish and are recorded. Their
failures count in the report, so a run can end with more failures than its budget, by at most
the number in flight when it tripped. Budgets round down: ``10%`` of 15 VPSes is 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.fleet import (
    Account,
    InDoubtPolicy,
    ReadinessMode,
    Rollout,
    VpsEntry,
    is_windows_image,
)
from orchestrator.manifest import SelectedFleet, Selection
from orchestrator.run.options import Endpoint

PLAN_FORMAT = 1

# Install times from the API notes; used only for the ETA.
LINUX_INSTALL_S = 300.0
WINDOWS_INSTALL_S = 900.0
# A reinstall round trip seen from the client, for the ETA's send phase.
TYPICAL_REQUEST_S = 0.5


@dataclass(frozen=True)
class PlannedVps:
    """One VPS the plan reinstalls."""

    kvm_id: str
    hostname: str
    image: str
    wave: int
    protected: bool
    user_data_sha256: str | None
    where: str


@dataclass(frozen=True)
class Wave:
    """One wave: its VPSes, and how many of them may fail before the run stops."""

    index: int
    kvm_ids: tuple[str, ...]
    failure_budget: int
    eta_s: float

    @property
    def size(self) -> int:
        """How many VPSes the wave reinstalls."""
        return len(self.kvm_ids)


@dataclass(frozen=True)
class PlanRollout:
    """The rollout settings a plan was made with, as the plan file writes them.

    Waves and budgets stay in the manifest's words (``"1"``, ``"10%"``): a plan says what was
    asked for; the resolved sizes are in ``Plan.waves`` and ``Plan.run_budget``.
    """

    concurrency: int
    rate_per_s: float
    waves: tuple[str, ...]
    soak_s: float
    wave_budget: str
    run_budget: str
    vps_deadline_s: float | None
    in_doubt: InDoubtPolicy
    in_doubt_window_s: float | None

    @classmethod
    def of(cls, rollout: Rollout, *, provable: bool = False) -> PlanRollout:
        """Return the plan's record of a fleet's ``Rollout``; ``provable``: some VPS's
        reinstall can be proven (readiness mode ssh), so an unwritten ``in_doubt`` is
        ``reconcile``."""
        in_doubt = rollout.in_doubt
        if provable and rollout.in_doubt_default:
            in_doubt = InDoubtPolicy.RECONCILE
        return cls(
            concurrency=rollout.concurrency,
            rate_per_s=rollout.rate_per_s,
            waves=tuple(str(w) for w in rollout.waves),
            soak_s=rollout.soak_s,
            wave_budget=str(rollout.wave_budget),
            run_budget=str(rollout.run_budget),
            vps_deadline_s=rollout.vps_deadline_s,
            in_doubt=in_doubt,
            in_doubt_window_s=rollout.in_doubt_window_s,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the settings as plain JSON data (the plan file's and the hash's form)."""
        data = asdict(self)
        data["waves"] = list(self.waves)
        data["in_doubt"] = self.in_doubt.value
        return data


@dataclass(frozen=True)
class PlanEndpoint:
    """The API a plan was checked against: the session URL and the allowed api hosts. Part
    of the plan and its hash: ``apply --plan`` with another endpoint is refused before any
    connection (a plan checked against the simulator never goes to the real account)."""

    session_url: str
    allowed_api_hosts: tuple[str, ...]

    @classmethod
    def of(cls, account: Account, endpoint: Endpoint | None = None) -> PlanEndpoint:
        """The endpoint a run of ``account`` talks to with the overrides of ``endpoint``."""
        given = endpoint or Endpoint()
        return cls(
            session_url=given.session_url or account.session_url,
            allowed_api_hosts=(*account.allowed_api_hosts, *given.extra_api_hosts),
        )

    def to_json(self) -> dict[str, Any]:
        """Return the endpoint as plain JSON data (the plan file's and the hash's form)."""
        return {"session_url": self.session_url, "allowed_api_hosts": list(self.allowed_api_hosts)}

    def describe(self) -> str:
        """Say the endpoint in words for a refusal."""
        return f"{self.session_url} (api hosts {', '.join(self.allowed_api_hosts) or 'none'})"


def recorded_endpoint(plan_file: Mapping[str, Any]) -> PlanEndpoint | None:
    """Return the endpoint a plan file was checked against, or None when it names none (a
    plan written before plans bound their endpoint; its hash no longer matches anyway)."""
    data = plan_file.get("endpoint")
    if not isinstance(data, Mapping) or not isinstance(data.get("session_url"), str):
        return None
    hosts = data.get("allowed_api_hosts")
    return PlanEndpoint(
        session_url=data["session_url"],
        allowed_api_hosts=tuple(str(h) for h in hosts) if isinstance(hosts, list) else (),
    )


@dataclass(frozen=True)
class Plan:
    """What a run will do. Build it with ``build_plan``; write it with ``to_json``."""

    fleet_name: str
    manifest_path: str
    manifest_sha256: str
    selection: Mapping[str, Any]
    rollout: PlanRollout
    targets: tuple[PlannedVps, ...]
    waves: tuple[Wave, ...]
    run_budget: int
    blast_radius: int
    protected: int
    eta_s: float
    content_hash: str
    endpoint: PlanEndpoint

    def to_json(self) -> dict[str, Any]:
        """Return the plan as plain JSON data (it holds no secrets)."""
        data = asdict(self)
        data["rollout"] = self.rollout.to_json()
        data["endpoint"] = self.endpoint.to_json()
        data["format"] = PLAN_FORMAT
        return data


def manifest_sha256(path: Path) -> str:
    """Return the SHA-256 of the manifest file's bytes. Raises ``OSError``."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def selection_json(selection: Selection) -> dict[str, Any]:
    """Return a selection as canonical JSON data (sorted, so equal selections hash equal)."""
    return {
        "only": sorted([key, sorted(values)] for key, values in selection.only),
        "limit": None if selection.limit is None else sorted(selection.limit),
        "exclude": sorted(selection.exclude),
        "include_protected": selection.include_protected,
    }


def resolve_waves(rollout: Rollout, total: int) -> list[int]:
    """Return the size of each wave for ``total`` selected VPSes.

    Waves are cumulative; a wave that adds nothing (``[1, "10%"]`` of 5 VPSes resolves to
    1 and 1) is dropped, and whatever the last wave leaves is added to it so that the waves
    always cover the selection.
    """
    sizes: list[int] = []
    done = 0
    for wave in rollout.waves:
        upto = wave.resolve(total)
        if upto > done:
            sizes.append(upto - done)
            done = upto
    if done < total:
        if sizes:
            sizes[-1] += total - done
        else:
            sizes.append(total)
    return sizes


def install_seconds(image: str) -> float:
    """Return the typical install time of an image (ETA only)."""
    return WINDOWS_INSTALL_S if is_windows_image(image) else LINUX_INSTALL_S


def build_plan(
    selected: SelectedFleet,
    selection: Selection,
    *,
    manifest_hash: str,
    user_data_hashes: Mapping[str, str | None],
    endpoint: PlanEndpoint | None = None,
) -> Plan:
    """Resolve waves and budgets for the selected VPSes and compute the ETA and hash.

    ``user_data_hashes`` maps each kvm id to the SHA-256 of its rendered user-data (None
    when it gets none); ``endpoint`` is the API the plan is checked against (default: the
    manifest's), bound into the hash. Raises ``KeyError`` when a selected VPS has no entry
    there.
    """
    bound = endpoint or PlanEndpoint.of(selected.fleet.account)
    rollout = selected.fleet.rollout
    entries: Sequence[VpsEntry] = selected.vps
    sizes = resolve_waves(rollout, len(entries))
    targets: list[PlannedVps] = []
    waves: list[Wave] = []
    start = 0
    for index, size in enumerate(sizes, start=1):
        members = entries[start : start + size]
        start += size
        targets.extend(
            PlannedVps(
                kvm_id=e.id,
                hostname=e.hostname,
                image=e.image,
                wave=index,
                protected=e.protected,
                user_data_sha256=user_data_hashes[e.id],
                where=e.where,
            )
            for e in members
        )
        waves.append(
            Wave(
                index=index,
                kvm_ids=tuple(e.id for e in members),
                failure_budget=rollout.wave_budget.resolve(size, round_up=False),
                eta_s=_wave_eta(members, rollout),
            )
        )
    soak = rollout.soak_s * max(0, len(waves) - 1)
    # Readiness mode ssh makes reconcile the in-doubt policy unless the manifest names one.
    provable = any(e.readiness.mode is ReadinessMode.SSH for e in entries)
    planned = PlanRollout.of(rollout, provable=provable)
    chosen = selection_json(selection)
    body = {
        "manifest_sha256": manifest_hash,
        "selection": chosen,
        "rollout": planned.to_json(),
        "targets": [[t.kvm_id, t.hostname, t.image, t.wave, t.user_data_sha256] for t in targets],
        "endpoint": bound.to_json(),
    }
    content_hash = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return Plan(
        fleet_name=selected.fleet.name,
        manifest_path=str(selected.fleet.path),
        manifest_sha256=manifest_hash,
        selection=chosen,
        rollout=planned,
        targets=tuple(targets),
        waves=tuple(waves),
        run_budget=rollout.run_budget.resolve(len(entries), round_up=False),
        blast_radius=selected.blast_radius.wiped,
        protected=selected.blast_radius.protected,
        eta_s=sum(w.eta_s for w in waves) + soak,
        content_hash=content_hash,
        endpoint=bound,
    )


def as_one_wave(plan: Plan) -> Plan:
    """Return ``plan`` with all its VPSes in one wave whose failure budget is the run's
    (``retry-failed``: the VPSes already had their canary; one re-failure past the run's
    budget stops the sending, never a canary wave's budget of 0). The hash is kept: it
    describes the inputs, which did not change."""
    ids = tuple(t.kvm_id for t in plan.targets)
    wave = Wave(
        index=1,
        kvm_ids=ids,
        failure_budget=plan.run_budget,
        eta_s=max((w.eta_s for w in plan.waves), default=0.0),
    )
    targets = tuple(replace(t, wave=1) for t in plan.targets)
    return replace(plan, targets=targets, waves=(wave,), eta_s=wave.eta_s)


def _wave_eta(members: Sequence[VpsEntry], rollout: Rollout) -> float:
    """Sending at the rate (or the concurrency, whichever binds), then the longest install."""
    if not members:
        return 0.0
    per_second = min(rollout.rate_per_s, rollout.concurrency / TYPICAL_REQUEST_S)
    send = len(members) / per_second
    waits = [
        install_seconds(e.image) for e in members if e.readiness.mode is not ReadinessMode.NONE
    ]
    return send + (max(waits) if waits else 0.0)
