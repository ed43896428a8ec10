"""Run a plan: waves of per-VPS flows under a concurrency cap, failure budgets and drain.

Per VPS: ``pending`` → (concurrency slot, rate token, durable intent) reinstall POST with
retries → ``accepted`` → readiness wait → ``ready``; or ``failed`` / ``in_doubt`` /
``skipped``. The concurrency cap holds only the sending phase: a VPS that waits minutes for
its install does not keep another from being sent.

The parts: ``run/jobs.py`` (jobs, waves, settings, result), ``run/runstate.py`` (states,
budgets, drain and cancel), ``run/sending.py`` (the send and its in-doubt decision, retry
safety), ``run/followups.py`` (readiness waits, the resend after the install window,
reconciliation); this module runs the waves.

Soaks: before each wave, the soak after the latest earlier wave that became ready is served,
counted from the time it became ready (``wave_ready``, recorded through ``on_wave_ready``),
so a resumed run serves an interrupted soak in full. An error that tears the run down
records the sends in flight in doubt, as a second signal does, then propagates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import anyio
from anyio.abc import TaskGroup

from orchestrator.model import TargetState
from orchestrator.run.followups import Followups
from orchestrator.run.jobs import Job, RunResult, RunSettings, WaveSpec

# The run's types live in run/jobs.py; most callers know them from here.
__all__ = ["Job", "RunResult", "RunSettings", "Scheduler", "WaveSpec"]


class Scheduler(Followups):
    """Runs waves of jobs against a ``ReinstallAPI``, reporting every change to a sink."""

    async def run(self, waves: Sequence[WaveSpec]) -> RunResult:
        """Run the waves in order and return the result. Never raises for per-VPS failures."""
        try:
            with anyio.CancelScope() as everything:
                self._everything = everything
                for wave in waves:
                    if not self.stopping:
                        await self._soak_before(wave.index)
                    if self.stopping:
                        self._skip_all(wave.jobs, self._stop_reason())
                        continue
                    self._wave_failures = self._prior.get(wave.index, 0)
                    self.phase.wave, self.phase.wave_size = wave.index, len(wave.jobs)
                    self.phase.wave_budget = wave.budget
                    self.phase.wave_failures = self._wave_failures
                    await self._run_wave(wave)
                    if not self.stopping and wave.index not in self._wave_ready:
                        self._wave_ready[wave.index] = at = self._clock.time()
                        if self._on_wave_ready is not None:
                            await self._on_wave_ready(wave.index, at)
        except BaseException:
            # An error (or a cancellation from outside) tore the run down: the POSTs it cut
            # off are in doubt, exactly as for a second signal.
            self._doubt_in_flight("the run stopped on an error while the send was in flight")
            raise
        if everything.cancelled_caught:
            self._doubt_in_flight("interrupted while the send was in flight")
            for wave in waves:
                self._skip_all(wave.jobs, "interrupted before it was sent")
        return self._result

    async def _soak_before(self, wave_index: int) -> None:
        """Serve the soak after the latest earlier wave that became ready, counted from when
        it did (as recorded: a resumed run serves an interrupted soak in full)."""
        soak = self._settings.soak_s
        before = [at for index, at in self._wave_ready.items() if index < wave_index]
        if soak <= 0 or not before:
            return
        left = soak - (self._clock.time() - max(before))
        if left > 0:
            self.phase.soak_until, self.phase.soak_before = self._clock.time() + left, wave_index
            try:
                with self._until_drained():
                    await self._clock.sleep(left)
            finally:
                self.phase.soak_until = None

    async def _run_wave(self, wave: WaveSpec) -> None:
        """Send the wave's reinstalls from a pool of ``concurrency`` workers.

        A pool, not a task per VPS: 20,000 parked tasks cost ~200 MB and make every garbage
        collection walk them. Readiness waits and resends after the install window run as
        follow-up tasks, so a long wait never holds a sending slot.
        """
        jobs = iter(wave.jobs)
        workers = min(int(self._limits.concurrency.total_tokens), len(wave.jobs))
        # Senders finish first (inner group), follow-ups may outlive them (outer group).
        async with anyio.create_task_group() as followups, anyio.create_task_group() as senders:
            for _ in range(workers):
                senders.start_soon(self._sender, jobs, followups, wave.budget)

    async def _sender(self, jobs: Iterator[Job], followups: TaskGroup, wave_budget: int) -> None:
        # Workers share one iterator: each next() hands a job to exactly one of them.
        for job in jobs:
            started = self._clock.monotonic()
            if job.accepted_already:
                # Already recorded as accepted: no event, only the readiness check is left.
                self._result.states[job.kvm_id] = TargetState.ACCEPTED
                followups.start_soon(self._await_ready, job, started, wave_budget)
                continue
            if self.stopping:
                self._set(job.kvm_id, job.wave, TargetState.SKIPPED, self._stop_reason())
                continue
            if job.presend_key is not None:
                self.prover.recall(job.kvm_id, job.presend_key)
            if job.proof is not None and job.in_doubt_since is None:
                # The scan comes first: its key rides on the ``pending`` event, so the journal
                # commits it with (or before) the intent.
                self._set(job.kvm_id, job.wave, TargetState.PENDING, presend=await self._scan(job))
            else:
                self._set(job.kvm_id, job.wave, TargetState.PENDING)
            step = await self._first_send(job, wave_budget)
            if step == "accepted":
                followups.start_soon(self._await_ready, job, started, wave_budget)
            elif step == "resend":
                followups.start_soon(self._resend_later, job, started, wave_budget)
            elif step == "reconcile":
                followups.start_soon(self._reconcile, job, started, wave_budget)
