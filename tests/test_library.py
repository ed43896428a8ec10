"""The library API (``import orchestrator``): a whole run driven from Python against the
simulator, in the test's own event loop, as a CI script would drive it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import orchestrator
from orchestrator import Confirmation, ReportFormat, SelectionOptions
from orchestrator.journal import RunStatus
from tests.conftest import SimFactory
from tests.test_plan import MARKER_ROOT, manifest, vps_lines

READINESS = "  readiness: {mode: api, min_install: 0.2s, poll_interval: 1s, deadline: 1m}\n"


async def test_a_whole_run_through_the_public_api(make_sim: SimFactory, tmp_path: Path) -> None:
    async with make_sim(vps_count=4, time_scale=0.001) as sim:
        path = manifest(sim, tmp_path, vps_lines(sim, 3), extra="  rate: 200/s\n")
        path.write_text(path.read_text().replace("  readiness: {mode: api}\n", READINESS))
        env = {
            "EDIS_EMAIL": sim.email,
            "EDIS_PASSWORD": sim.password,
            "EDIS_ROOT_PASSWORD": MARKER_ROOT,
        }
        journal = tmp_path / "journal.sqlite"
        chosen = sim.vps_ids[:3]
        untouched = dict.fromkeys(sim.vps_ids, 0)
        once = {**untouched, **dict.fromkeys(chosen, 1)}

        checked = orchestrator.validate(path, schema=False, env=env)
        assert [e.id for e in checked.selected.vps] == chosen
        with pytest.raises(orchestrator.ManifestError, match="kvm_9_9"):
            orchestrator.validate(path, selection=SelectionOptions(limit=("kvm_9_9",)), env=env)

        planned = await orchestrator.plan(path, env=env)
        assert planned.plan.blast_radius == 3
        assert sim.counters.reinstall_received == untouched  # plan sends nothing that wipes

        with pytest.raises(orchestrator.UsageError, match="stale"):
            await orchestrator.apply(path, journal=journal, plan_hash="0" * 64, env=env)
        with pytest.raises(orchestrator.UsageError, match="does not match"):
            await orchestrator.apply(path, journal=journal, confirm=Confirmation(count=2), env=env)
        assert sim.counters.reinstall_received == untouched

        outcome = await orchestrator.apply(
            path, journal=journal, plan_hash=planned.plan.content_hash, env=env
        )
        assert outcome.status is RunStatus.DONE
        # Each selected VPS reinstalled exactly once, the fourth never touched.
        assert sim.counters.reinstall_received == once
        assert sim.counters.reinstall_accepted == once

        # Nothing is left to resume and nothing failed: neither sends again.
        assert await orchestrator.resume(outcome.run_id, journal=journal, env=env) is None
        assert await orchestrator.retry_failed(outcome.run_id, journal=journal, env=env) is None
        assert sim.counters.reinstall_received == once

        assert [r.id for r in await orchestrator.runs(journal)] == [outcome.run_id]
        data = json.loads(
            await orchestrator.run_report(outcome.run_id, journal=journal, format=ReportFormat.JSON)
        )
        assert data["totals"]["ready"] == 3
        text = await orchestrator.run_report(outcome.run_id, journal=journal)
        assert outcome.run_id in text
        assert MARKER_ROOT not in text
