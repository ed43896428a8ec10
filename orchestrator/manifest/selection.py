"""Which part of a fleet a run touches, and how many disks that would wipe.

``--only KEY=V1[,V2...]`` keeps VPSes whose tag (``tag=web``) or group (``group=db``) is one
of the values; several ``--only`` must all match. ``--limit`` keeps only the named ids,
``--exclude`` drops the named ids. VPSes marked ``protected: true`` are left out unless
``--include-protected`` is given, and naming one in ``--limit`` without it is an error rather
than a silent skip. Unknown ids, tags and groups are errors, and so is a selection that keeps
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.errors import SelectionError
from orchestrator.fleet import KVM_ID_RE, Fleet, VpsEntry
from orchestrator.suggest import Suggestions

ONLY_KEYS = ("tag", "group")


@dataclass(frozen=True, slots=True)
class Selection:
    """A parsed selection. ``only`` holds (key, values) filters; ``limit`` None means all."""

    only: tuple[tuple[str, frozenset[str]], ...] = ()
    limit: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    include_protected: bool = False

    @classmethod
    def from_args(
        cls,
        *,
        only: Sequence[str] = (),
        limit: Sequence[str] = (),
        exclude: Sequence[str] = (),
        include_protected: bool = False,
    ) -> Selection:
        """Build a selection from command-line values (each may hold comma-separated items).

        Raises ``SelectionError`` for a malformed ``--only`` or a malformed kvm id.
        """
        problems: list[str] = []
        filters: list[tuple[str, frozenset[str]]] = []
        for text in only:
            key, sep, values = text.partition("=")
            items = frozenset(v.strip() for v in values.split(",") if v.strip())
            if not sep or key.strip() not in ONLY_KEYS or not items:
                problems.append(
                    f"--only {text!r}: expected tag=NAME or group=NAME (several values "
                    "separated by commas)"
                )
                continue
            filters.append((key.strip(), items))
        limit_ids = _ids("--limit", limit, problems)
        exclude_ids = _ids("--exclude", exclude, problems)
        if problems:
            raise SelectionError(problems)
        return cls(
            only=tuple(filters),
            limit=tuple(limit_ids) if limit else None,
            exclude=tuple(exclude_ids),
            include_protected=include_protected,
        )


def _ids(option: str, values: Sequence[str], problems: list[str]) -> list[str]:
    out: list[str] = []
    for text in values:
        for item in text.split(","):
            kvm_id = item.strip()
            if not kvm_id:
                continue
            if not KVM_ID_RE.match(kvm_id):
                problems.append(
                    f"{option}: malformed id {kvm_id!r}; expected kvm_<digits>_<digits>"
                )
            else:
                out.append(kvm_id)
    return list(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class BlastRadius:
    """How many disks a run would wipe.

    ``wiped`` VPSes are selected, ``protected`` of them are marked protected (non-zero only
    with ``--include-protected``); ``protected_left_out`` matched the filters but were left
    out for being protected; ``fleet_size`` is the manifest's VPS count.
    """

    fleet_size: int
    wiped: int
    protected: int
    protected_left_out: int

    def __str__(self) -> str:
        text = f"{self.wiped} of {self.fleet_size} VPSes would be wiped"
        if self.protected:
            text += f", {self.protected} of them protected"
        if self.protected_left_out:
            text += f" ({self.protected_left_out} protected left out)"
        return text


@dataclass(frozen=True, slots=True)
class SelectedFleet:
    """The VPSes a run would reinstall, in manifest order, with its blast radius."""

    fleet: Fleet
    vps: tuple[VpsEntry, ...]
    left_out_protected: tuple[VpsEntry, ...]
    blast_radius: BlastRadius

    def __len__(self) -> int:
        return len(self.vps)


def select(fleet: Fleet, selection: Selection) -> SelectedFleet:
    """Apply ``selection`` to ``fleet``.

    Raises ``SelectionError`` listing every unknown id, tag or group, every protected VPS
    named in ``--limit`` without ``--include-protected``, and an empty result.
    """
    problems: list[str] = []
    known_ids = list(fleet.ids)
    hint = Suggestions()  # bounded: thousands of unknown ids must not take minutes
    for option, ids in (("--limit", selection.limit or ()), ("--exclude", selection.exclude)):
        for kvm_id in ids:
            if fleet.get(kvm_id) is None:
                problems.append(
                    f"{option}: {kvm_id} is not in {fleet.path}{hint(kvm_id, known_ids, 'id')}"
                )
    for key, values in selection.only:
        known = fleet.tags if key == "tag" else fleet.groups
        for value in sorted(values - known):
            problems.append(
                f"--only {key}={value}: no such {key} in {fleet.path}{hint(value, known, key)}"
            )
    limit = None if selection.limit is None else frozenset(selection.limit)
    exclude = frozenset(selection.exclude)
    chosen = [v for v in fleet.vps if _matches(v, limit, exclude, selection.only)]
    kept: list[VpsEntry] = []
    left_out: list[VpsEntry] = []
    named = set(selection.limit or ())
    for entry in chosen:
        if entry.protected and not selection.include_protected:
            left_out.append(entry)
            if entry.id in named:
                problems.append(
                    f"--limit: {entry.id} ({entry.hostname}) is protected; add "
                    "--include-protected to reinstall it"
                )
        else:
            kept.append(entry)
    if not kept and not problems:
        why = f"; {len(left_out)} protected VPSes were left out" if left_out else ""
        problems.append(f"the selection matches no VPS{why}")
    if problems:
        raise SelectionError(problems)
    radius = BlastRadius(
        fleet_size=len(fleet.vps),
        wiped=len(kept),
        protected=sum(1 for v in kept if v.protected),
        protected_left_out=len(left_out),
    )
    return SelectedFleet(fleet, tuple(kept), tuple(left_out), radius)


def _matches(
    entry: VpsEntry,
    limit: frozenset[str] | None,
    exclude: frozenset[str],
    only: Sequence[tuple[str, frozenset[str]]],
) -> bool:
    if limit is not None and entry.id not in limit:
        return False
    if entry.id in exclude:
        return False
    for key, values in only:
        if key == "tag" and not (entry.tags & values):
            return False
        if key == "group" and entry.group not in values:
            return False
    return True
