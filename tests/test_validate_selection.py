"""Selecting part of a fleet (--only/--limit/--exclude/--include-protected) and the blast radius."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import SelectionError, UsageError
from orchestrator.fleet import Fleet
from orchestrator.manifest.loader import load_fleet
from orchestrator.manifest.selection import BlastRadius, Selection, select
from tests.manifest_support import ENV, write_fleet

MANIFEST = """\
version: 1
account: {email: a@b.c, password: {env: EDIS_PASSWORD}}
defaults:
  image: cloudinit_debian-bookworm
  root_password: {env: EDIS_ROOT_PASSWORD}
groups:
  web: {tags: [web]}
  db: {tags: [db], protected: true}
vps:
  - {id: kvm_1_1, hostname: web-1, group: web, tags: [eu]}
  - {id: kvm_2_2, hostname: web-2, group: web, tags: [us]}
  - {id: kvm_3_3, hostname: db-1, group: db, tags: [eu]}
  - {id: kvm_4_4, hostname: db-2, group: db, tags: [us], protected: false}
  - {id: kvm_5_5, hostname: misc, tags: [eu]}
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return load_fleet(write_fleet(tmp_path_factory.mktemp("sel"), MANIFEST), ENV)


def ids(fleet: Fleet, **kwargs: object) -> list[str]:
    chosen = select(fleet, Selection.from_args(**kwargs))  # type: ignore[arg-type]
    return [v.id for v in chosen.vps]


def test_everything_but_protected_by_default(fleet: Fleet) -> None:
    chosen = select(fleet, Selection())
    assert [v.id for v in chosen.vps] == ["kvm_1_1", "kvm_2_2", "kvm_4_4", "kvm_5_5"]
    assert [v.id for v in chosen.left_out_protected] == ["kvm_3_3"]
    assert chosen.blast_radius == BlastRadius(
        fleet_size=5, wiped=4, protected=0, protected_left_out=1
    )
    assert str(chosen.blast_radius) == "4 of 5 VPSes would be wiped (1 protected left out)"


def test_include_protected(fleet: Fleet) -> None:
    chosen = select(fleet, Selection(include_protected=True))
    assert len(chosen) == 5
    assert chosen.blast_radius == BlastRadius(5, 5, 1, 0)
    assert str(chosen.blast_radius) == "5 of 5 VPSes would be wiped, 1 of them protected"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"only": ["tag=web"]}, ["kvm_1_1", "kvm_2_2"]),
        ({"only": ["tag=eu"]}, ["kvm_1_1", "kvm_5_5"]),
        ({"only": ["tag=eu"], "include_protected": True}, ["kvm_1_1", "kvm_3_3", "kvm_5_5"]),
        ({"only": ["tag=web,db"]}, ["kvm_1_1", "kvm_2_2", "kvm_4_4"]),
        ({"only": ["tag=eu", "group=web"]}, ["kvm_1_1"]),
        ({"only": ["group=db"]}, ["kvm_4_4"]),
        ({"limit": ["kvm_2_2,kvm_5_5"]}, ["kvm_2_2", "kvm_5_5"]),
        ({"limit": ["kvm_2_2", "kvm_5_5"], "exclude": ["kvm_5_5"]}, ["kvm_2_2"]),
        ({"exclude": ["kvm_1_1,kvm_2_2"]}, ["kvm_4_4", "kvm_5_5"]),
        ({"only": ["tag=us"], "exclude": ["kvm_2_2"]}, ["kvm_4_4"]),
    ],
)
def test_selection(fleet: Fleet, kwargs: dict[str, object], expected: list[str]) -> None:
    assert ids(fleet, **kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"only": ["color=red"]}, "expected tag=NAME or group=NAME"),
        ({"only": ["tag="]}, "expected tag=NAME or group=NAME"),
        ({"limit": ["kvm-1"]}, "--limit: malformed id 'kvm-1'"),
        ({"exclude": ["kvm_1_1,web-1"]}, "--exclude: malformed id 'web-1'"),
    ],
)
def test_malformed_selection(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(SelectionError) as info:
        Selection.from_args(**kwargs)  # type: ignore[arg-type]
    assert any(fragment in p for p in info.value.problems)
    assert isinstance(info.value, UsageError)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"limit": ["kvm_9_9"]}, "--limit: kvm_9_9 is not in"),
        ({"limit": ["kvm_1_2"]}, "did you mean 'kvm_"),
        ({"exclude": ["kvm_9_9"]}, "--exclude: kvm_9_9 is not in"),
        ({"only": ["tag=wbe"]}, "--only tag=wbe: no such tag"),
        ({"only": ["group=dbs"]}, "no such group in"),
        ({"limit": ["kvm_3_3"]}, "kvm_3_3 (db-1) is protected; add --include-protected"),
        ({"only": ["tag=db"], "exclude": ["kvm_4_4"]}, "matches no VPS; 1 protected VPSes"),
    ],
)
def test_selection_problems(fleet: Fleet, kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(SelectionError) as info:
        select(fleet, Selection.from_args(**kwargs))  # type: ignore[arg-type]
    assert any(fragment in p for p in info.value.problems), info.value.problems


def test_every_selection_problem_at_once(fleet: Fleet) -> None:
    with pytest.raises(SelectionError) as info:
        select(
            fleet,
            Selection.from_args(limit=["kvm_8_8", "kvm_9_9"], exclude=["kvm_7_7"], only=["tag=x"]),
        )
    assert len(info.value.problems) == 4


def test_limit_names_protected_vps_with_flag(fleet: Fleet) -> None:
    assert ids(fleet, limit=["kvm_3_3"], include_protected=True) == ["kvm_3_3"]


def test_selection_of_a_large_fleet_is_linear(tmp_path: Path) -> None:
    lines = [
        "version: 1",
        "account: {email: a@b.c, password: {env: EDIS_PASSWORD}}",
        "defaults: {image: cloudinit_debian-bookworm, root_password: {env: EDIS_ROOT_PASSWORD}}",
        "vps:",
    ]
    lines += [f"  - {{id: kvm_{i}_{i}, hostname: h{i}}}" for i in range(5000)]
    fleet = load_fleet(write_fleet(tmp_path, "\n".join(lines) + "\n"), ENV)
    limit = ",".join(f"kvm_{i}_{i}" for i in range(0, 5000, 2))
    chosen = select(fleet, Selection.from_args(limit=[limit], exclude=["kvm_0_0"]))
    assert len(chosen) == 2499
