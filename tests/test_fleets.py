"""Every manifest under ``fleets/`` validates: new files are picked up by the glob."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.manifest.loader import check_manifest
from orchestrator.templates.schema import CloudInitSchema
from tests.manifest_support import ENV, REPO, AnyEnv, cli

FLEETS = sorted((REPO / "fleets").rglob("*.yaml"))


def test_there_are_fleets() -> None:
    names = {p.relative_to(REPO / "fleets").as_posix() for p in FLEETS}
    assert "example.yaml" in names
    assert any(name.startswith("drills/") for name in names)


@pytest.mark.parametrize("path", FLEETS, ids=lambda p: p.relative_to(REPO / "fleets").as_posix())
def test_fleet_file_is_valid(path: Path) -> None:
    # Any variable a manifest names is "set"; strict, so these files carry no warnings either.
    report = check_manifest(path, AnyEnv(), strict=True, schema=CloudInitSchema.find())
    assert report.problems == []
    assert report.fleet is not None
    assert len(report.fleet) >= 1


def test_example_matches_the_simulator_account() -> None:
    report = check_manifest(REPO / "fleets" / "example.yaml", ENV)
    assert report.fleet is not None
    assert [(v.id, v.hostname) for v in report.fleet.vps] == [
        (f"kvm_{100000 + i}_{200000 + i}", f"vps-{i:03d}") for i in range(1, 6)
    ]
    assert [str(w) for w in report.fleet.rollout.waves] == ["1", "100%"]


def test_example_through_the_cli_with_strict() -> None:
    proc = cli(["validate", "fleets/example.yaml", "--strict"], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
