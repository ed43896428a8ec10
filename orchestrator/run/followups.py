"""What follows a send, as tasks that never hold a sending slot: the readiness wait, the one
resend of an in-doubt reinstall after its install window, and the reconciliation of an
in-doubt send by the host key the VPS presents (``rollout.in_doubt: reconcile``)."""

from __future__ import annotations

import random

from orchestrator.errors import ApiError, InDoubtError
from orchestrator.fleet import ReadinessMode
from orchestrator.model import TargetState
from orchestrator.run.jobs import Job
from orchestrator.run.readiness import ReadyResult, wait_ready
from orchestrator.run.reconcile import Resolution, reconcile
from orchestrator.run.sending import Sending


class Followups(Sending):
    """Readiness waits, resends after the window and reconciliation (``Scheduler``'s base)."""

    async def _reconcile(self, job: Job, started: float, wave_budget: int) -> None:
        """Resolve an in-doubt send by the host key the VPS presents (``run/reconcile.py``):
        accepted (then cloud-init decides), resent once, or left in doubt."""
        why = self._doubts.pop(job.kvm_id, "in doubt")
        proof = job.proof
        if proof is None:  # pragma: no cover - _reconciles checked it
            return
        look = "looking at its host key for the install window"
        self._set(job.kvm_id, job.wave, TargetState.IN_DOUBT, f"{why}; {look}")
        host = await self._address(job)
        window = job.install_window_s
        if job.in_doubt_since is not None:
            window -= self._clock.time() - job.in_doubt_since
        with self._until_drained() as scope:
            verdict = await reconcile(
                self.prover, job.kvm_id, proof, host, job.port,
                window_s=window, may_resend=not job.resend_spent,
            )  # fmt: skip
        if scope.cancelled_caught:
            self._fail(job, TargetState.IN_DOUBT, f"{why}; interrupted while looking", wave_budget)
            return
        self.reconciled[verdict.resolution] += 1
        if verdict.resolution is Resolution.UNRESOLVED or host is None:
            self._fail(job, TargetState.IN_DOUBT, verdict.reason, wave_budget)
            return
        if verdict.resolution is Resolution.RESEND:
            self._set(job.kvm_id, job.wave, TargetState.IN_DOUBT, verdict.reason, resend=True)
            await self._resend_then_wait(job, started, wave_budget, verdict.reason)
            return
        self._set(job.kvm_id, job.wave, TargetState.ACCEPTED, verdict.reason)
        with self._until_drained() as scope:
            result = await self.prover.finish(job.kvm_id, proof, host, job.port, started)
        if scope.cancelled_caught:
            return  # drained: stays accepted, resume checks it again
        reason = f"{verdict.reason}; {result.reason}"
        if result.ready:
            self._set(job.kvm_id, job.wave, TargetState.READY, reason)
        else:
            self._fail(job, TargetState.FAILED, f"not ready: {reason}", wave_budget)

    async def _resend_later(self, job: Job, started: float, wave_budget: int) -> None:
        """Resend an in-doubt reinstall once its install window has passed, then wait."""
        why = self._doubts.pop(job.kvm_id, "in doubt")
        window = job.install_window_s
        if job.in_doubt_since is not None:
            window -= self._clock.time() - job.in_doubt_since
        with self._until_drained() as scope:
            await self._clock.sleep(max(0.0, window))
        if scope.cancelled_caught:
            # Drained during the window: the resend stays decided, resume serves the rest.
            self._fail(job, TargetState.IN_DOUBT, why, wave_budget, resend=True)
            return
        await self._resend_then_wait(job, started, wave_budget)

    async def _resend_then_wait(
        self, job: Job, started: float, wave_budget: int, reason: str = ""
    ) -> None:
        """Send the one resend of an in-doubt reinstall; accepted (with ``reason``), wait
        for readiness; in doubt again or failed, count it against the budgets."""
        try:
            await self._send(job, resend=True)
        except InDoubtError as again:
            self._fail(job, TargetState.IN_DOUBT, again.message, wave_budget)
            return
        except ApiError as again:
            self._fail(job, TargetState.FAILED, again.message, wave_budget)
            return
        self._set(job.kvm_id, job.wave, TargetState.ACCEPTED, reason)
        await self._await_ready(job, started, wave_budget)

    async def _await_ready(self, job: Job, started: float, wave_budget: int) -> None:
        deadline = job.deadline_s
        if job.vps_deadline_s is not None:
            # The per-VPS cap covers the whole flow: what sending took is not left for waiting.
            deadline = min(deadline, job.vps_deadline_s - (self._clock.monotonic() - started))
        with self._until_drained() as scope:
            result = await self._readiness(job, max(0.0, deadline), started)
        if scope.cancelled_caught:
            return  # drained: stays accepted, resume checks it again
        if result.ready:
            self._set(job.kvm_id, job.wave, TargetState.READY, result.reason)
        else:
            self._fail(job, TargetState.FAILED, f"not ready: {result.reason}", wave_budget)

    async def _readiness(self, job: Job, deadline: float, started: float) -> ReadyResult:
        # Counted from the recorded acceptance on resume, from now otherwise.
        accepted = self._clock.monotonic()
        if job.accepted_already and job.accepted_at is not None:
            accepted = started - max(0.0, self._clock.time() - job.accepted_at)
        host: str | None = None
        if job.proof is not None:
            host = await self._address(job)
            if host is None:
                return ReadyResult(False, "no IP address known for the ssh proof", 0.0, 0)
            return await self.prover.wait(job.kvm_id, job.proof, host, job.port, deadline)
        if job.readiness is ReadinessMode.TCP:
            host = await self._polled(lambda: self._api.address(job.kvm_id))
            if host is None:
                return ReadyResult(False, "no IP address known for the tcp probe", 0.0, 0)

        async def power() -> str:
            return await self._polled(lambda: self._api.power(job.kvm_id))

        return await wait_ready(
            job.readiness,
            clock=self._clock,
            deadline_seconds=deadline,
            min_install_seconds=min(job.min_install_s, deadline),
            poll_interval=job.poll_interval_s,
            accepted_at=accepted,
            power=power,
            host=host,
            port=job.port,
            rng=random.Random(job.kvm_id),
        )
