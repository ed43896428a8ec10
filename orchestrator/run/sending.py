"""Sending one VPS's reinstall: a concurrency slot, a rate token, a durable intent, then the
POST with retries; and the polls (address, host key) that go through the same limiter.

Retry safety lives in ``retry.decide``: not-sent and throttled attempts are retried, a refused
signature was already refreshed and replayed once by the session book, rejected is final, and
an in-doubt reinstall is never resent blindly: under the ``report`` policy it ends in doubt,
under ``resend-after-window`` it is resent once, after the image's install window has passed
(so a running install is never interrupted), with a new durable intent. "Once" is a journal
fact: the ``in_doubt`` event carries ``resend=True`` (the journal records the decision) and the
resend's intent is marked (``resent_at``; the journal refuses a second), so a resumed run
serves the rest of the window counted from the recorded send and never resends twice. The
policy trades a possible double wipe (the in-doubt reinstall may have run) for progress.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from orchestrator.errors import ApiError, InDoubtError
from orchestrator.fleet import InDoubtPolicy
from orchestrator.model import Outcome, TargetState
from orchestrator.run.jobs import Job
from orchestrator.run.retry import call_with_retries
from orchestrator.run.runstate import RunState

T = TypeVar("T")


class Sending(RunState):
    """The first send of a VPS's reinstall and what it decides next (``Scheduler``'s base)."""

    async def _first_send(
        self, job: Job, wave_budget: int
    ) -> Literal["accepted", "resend", "reconcile", "over"]:
        """Send the reinstall once (with retries of what was not processed)."""
        try:
            if job.in_doubt_since is not None:
                raise InDoubtError(
                    "an intent was recorded but no outcome (the run stopped while sending)",
                    endpoint="set/reinstall",
                    kvm_id=job.kvm_id,
                )
            await self._send(job)
        except InDoubtError as exc:
            if self._reconciles(job):
                self._doubts[job.kvm_id] = exc.message
                return "reconcile"
            resend = self._settings.in_doubt is InDoubtPolicy.RESEND_AFTER_WINDOW
            if job.resend_spent:
                why = f"{exc.message}; its one resend was already sent, never a second"
                self._fail(job, TargetState.IN_DOUBT, why, wave_budget)
                return "over"
            if not resend or self.stopping:
                # Stopping: the resend stays decided (journal), resume serves the window.
                self._fail(job, TargetState.IN_DOUBT, exc.message, wave_budget, resend=resend)
                return "over"
            self._set(
                job.kvm_id,
                job.wave,
                TargetState.IN_DOUBT,
                "waiting out the install window",
                resend=True,
            )
            self._doubts[job.kvm_id] = exc.message
            return "resend"
        except ApiError as exc:
            self._fail(job, TargetState.FAILED, exc.message, wave_budget)
            return "over"
        except _Skipped as why:
            self._set(job.kvm_id, job.wave, TargetState.SKIPPED, str(why))
            return "over"
        self._set(job.kvm_id, job.wave, TargetState.ACCEPTED)
        return "accepted"

    def _reconciles(self, job: Job) -> bool:
        """Whether an in-doubt send of ``job`` is resolved by looking (``reconcile``)."""
        reconcile = self._settings.in_doubt is InDoubtPolicy.RECONCILE
        return reconcile and job.proof is not None and not self.stopping

    async def _send(self, job: Job, *, resend: bool = False) -> None:
        async with self._limits.concurrency:
            if self.stopping and not resend:
                raise _Skipped(self._stop_reason())

            async def attempt() -> None:
                await self._limits.requests.acquire("call")
                if self.stopping and not resend:
                    # Stopped while waiting for a rate token (or between retries of a
                    # request that never left): nothing new is sent.
                    raise _Skipped(self._stop_reason())
                await self._sink.before_send(job.kvm_id, job.wave)
                self._set(job.kvm_id, job.wave, TargetState.INTENT)
                self._in_flight[job.kvm_id] = job.wave
                if resend:
                    self._resending.add(job.kvm_id)
                try:
                    await self._api.reinstall(
                        job.kvm_id, image=job.image, password=job.password, user_data=job.user_data
                    )
                except ApiError as exc:
                    self._limits.requests.report(exc)
                    self._in_flight.pop(job.kvm_id, None)
                    if exc.outcome in (Outcome.NOT_SENT, Outcome.THROTTLED):
                        # Not processed: back to pending until the retry's new intent.
                        self._set(job.kvm_id, job.wave, TargetState.PENDING, "not sent")
                    raise
                # Not in a finally: a send cancelled mid-flight must stay in _in_flight so
                # the run records it in doubt.
                self._in_flight.pop(job.kvm_id, None)
                self._limits.requests.report(None)

            # The limiter hears every answer (report above): it alone decides whether a
            # throttle slows or pauses the fleet; the retry only waits for this request.
            await call_with_retries(
                attempt,
                destructive=True,
                policy=self._settings.retry,
                budget=self._budget,
                clock=self._clock,
                rng=self._rng,
            )

    async def _address(self, job: Job) -> str | None:
        """The VPS's IPv4 address (``get/details``, asked once per run); None if unknown."""
        if job.kvm_id not in self._addresses:
            try:
                self._addresses[job.kvm_id] = await self._polled(
                    lambda: self._api.address(job.kvm_id)
                )
            except ApiError:
                return None  # not remembered: the next look asks again
        return self._addresses[job.kvm_id]

    async def _scan(self, job: Job) -> str | None:
        """Readiness mode ssh: record the host key the VPS presents just before its send and
        return it for the journal (``""``: nothing answered; None: no address to scan)."""
        host = await self._address(job)
        if host is None:
            return None
        return await self.prover.before_send(job.kvm_id, host, job.port)

    async def _polled(self, fn: Callable[[], Awaitable[T]]) -> T:
        await self._limits.requests.acquire("poll")
        try:
            result = await fn()
        except ApiError as exc:
            self._limits.requests.report(exc)
            raise
        self._limits.requests.report(None)
        return result


class _Skipped(Exception):
    """Internal: a job reached its send slot after the run stopped sending."""
