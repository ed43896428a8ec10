"""The PostgreSQL batch writer under pipeline mode: every statement's answer is its own.

A batch goes to the server in pipeline mode and its answers are read after the commit. The
server answers as soon as its output buffer fills (about 8 kB), so with a large batch some
answers arrive while later statements are still being sent. A cursor holds only the answer of
its last statement, and reading it returns whatever has arrived: a cursor used for two
statements may return the first one's rows. These tests send batches large enough to make the
server answer mid-pipeline and check every answer the batch reads (which outcomes applied,
which intents were refused and why), on the store itself (``pg_store.PgStore``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.journal.batch import Batch, IntentRequest
from orchestrator.journal.pg_store import PgStore
from orchestrator.model import TargetState

PID, HOST = 4242, "runner-a"


@pytest.fixture
def store(pg_url: str) -> Iterator[PgStore]:
    s = PgStore(
        pg_url, shown="pg", secrets=[], pid=PID, hostname=HOST, busy_timeout=5, stale_after=60
    )
    try:
        yield s
    finally:
        s.close()


def _run(store: PgStore, n: int, prefix: str) -> tuple[str, list[str]]:
    run_id = store.create_run("fleet.yaml", "a" * 64, "b" * 64, "{}", 1000.0)
    kvm_ids = [f"{prefix}-{i:04d}-" + "x" * 40 for i in range(n)]  # long ids: large answers
    store.add_targets(
        [
            (run_id, k, 0, i, "debian-12", f"web-{i}", "c" * 64, 1000.0)
            for i, k in enumerate(kvm_ids)
        ]
    )
    return run_id, kvm_ids


@pytest.mark.parametrize("size", [3, 150, 600])
def test_a_large_batch_reads_each_statements_own_answer(store: PgStore, size: int) -> None:
    for round_no in range(4):  # the statements get prepared after a few uses: both paths
        run_id, kvm_ids = _run(store, size, f"r{round_no}")
        store.acquire_locks(run_id, kvm_ids[:-1], 1001.0)  # the last one is not ours
        first = store.write_batch(
            Batch(intents=[IntentRequest(run_id, tuple(kvm_ids[:-1]), 1002.0)])
        )
        assert first == {}

        batch = Batch()
        # Every VPS but the last: accepted then ready (two rounds of outcomes, each answering
        # with the rows it applied); the last: a ready that does not fit (it is pending).
        for k in kvm_ids[:-1]:
            batch.outcomes.append((run_id, k, TargetState.ACCEPTED, "", 1003.0))
        for k in kvm_ids[:-1]:
            batch.outcomes.append((run_id, k, TargetState.READY, "", 1004.0))
        batch.outcomes.append((run_id, kvm_ids[-1], TargetState.READY, "", 1004.0))
        batch.attempts += [
            (run_id, k, 1003.0, "reinstall", "accepted", 200, "queued", 0.25) for k in kvm_ids
        ]
        batch.progress[run_id] = {"wave_position": 1, "updated_at": 1004.0}
        ready, unlocked = (
            IntentRequest(run_id, (kvm_ids[0],), 1005.0),
            IntentRequest(run_id, (kvm_ids[-1],), 1005.0),
        )
        stranger = IntentRequest(run_id, ("not-a-target",), 1005.0)
        batch.intents += [ready, unlocked, stranger]
        ignored_before = len(store.ignored_outcomes)

        refused = store.write_batch(batch)

        assert refused == {
            ready: f"{kvm_ids[0]}: state is ready; another send could repeat it",
            unlocked: f"{kvm_ids[-1]}: locked by nobody, not by this process",
            stranger: f"not-a-target: not a target of run {run_id}",
        }
        assert store.ignored_outcomes[ignored_before:] == [
            (run_id, kvm_ids[-1], TargetState.READY, "pending")
        ]
        states = {t.kvm_id: (t.state, t.sends) for t in store.targets(run_id)}
        assert states == {
            **{k: (TargetState.READY, 1) for k in kvm_ids[:-1]},
            kvm_ids[-1]: (TargetState.PENDING, 0),
        }
        assert len(store.attempts(run_id, None)) == size
        assert store.run(run_id).wave_position == 1
