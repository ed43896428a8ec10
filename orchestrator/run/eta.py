"""The live ETA of a run: the plan's model (rate, waves, soak, install time per image),
corrected by what the run observes. Never an extrapolation from completions alone.

The model replays what is left of the plan from now on:

- a wave not finished: its VPSes not sent yet go out one per ``1/rate`` seconds (the rate the
  run shows it can send at, once it has sent enough to tell; the configured rate before);
  each one sent ends at its send time plus its image's install time; those sent and not yet
  final end at their acceptance plus that time (a VPS already past it ends "soon": a small
  share of the estimate from now). The wave ends with its slowest VPS.
- between two waves, the soak (counted from the end of the earlier wave, as the scheduler
  counts it).

The install time of an image starts as the plan's (``run.plan.install_seconds``, or what the
caller passes) and is replaced by what the run saw: the 90th percentile of the install times
of finished VPSes of that image (accepted → ready); an image not seen yet gets the plan's
figure scaled by the median ratio observed/planned of the images that were seen. A VPS whose
readiness is ``none`` has no install to wait for.

Pure bookkeeping over ``TargetEvent``s and a "now" passed in: tests drive it from a table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.fleet import ReadinessMode
from orchestrator.model import TargetEvent, TargetState
from orchestrator.run.jobs import WaveSpec
from orchestrator.run.plan import install_seconds

# A VPS past its expected install time is expected within this share of that time.
OVERDUE_SHARE = 0.1
# Sends observed before the run's own send rate replaces the configured one.
RATE_SAMPLES = 20
# A VPS's send seen from the client (the plan's figure): the concurrency bound on the rate.
TYPICAL_REQUEST_S = 0.5


@dataclass(frozen=True)
class EtaVps:
    """One VPS of the model: its wave, its image and whether readiness waits for an install."""

    kvm_id: str
    wave: int
    image: str
    waits: bool = True


@dataclass(frozen=True)
class EtaPlan:
    """What the plan says: the VPSes in send order, the rate, concurrency and soak."""

    vps: tuple[EtaVps, ...]
    rate: float
    concurrency: int
    soak_s: float = 0.0

    @property
    def send_rate(self) -> float:
        """Sends per second the plan expects: the rate or the concurrency, whichever binds."""
        bounds = [b for b in (self.rate, self.concurrency / TYPICAL_REQUEST_S) if b > 0]
        return min(bounds) if bounds else 1.0


class EtaModel:
    """The plan's model of a run, corrected by its events (see the module docstring).

    ``prior`` gives the plan's install seconds of an image. Feed every event to ``observe``;
    ``remaining(now)`` returns the seconds until every VPS is final (``now`` and event times
    are wall-clock seconds).
    """

    def __init__(self, plan: EtaPlan, prior: Callable[[str], float]) -> None:
        self._plan = plan
        self._prior = prior
        self._by_id = {v.kvm_id: v for v in plan.vps}
        self._waves: dict[int, list[EtaVps]] = {}
        for v in plan.vps:
            self._waves.setdefault(v.wave, []).append(v)
        self._state: dict[str, TargetState] = {}
        self._sent: dict[str, float] = {}
        self._accepted: dict[str, float] = {}
        self._seen: dict[str, list[float]] = {}
        # Per wave: first and last send time and the number of sends (the rate is measured
        # within a wave: the soak and installs between waves are not sending time).
        self._sending: dict[int, tuple[float, float, int]] = {}
        self._wave_end: dict[int, float] = {}

    # ----------------------------------------------------------------- observing

    def observe(self, event: TargetEvent) -> None:
        """Record one state change of one VPS (unknown VPSes are ignored)."""
        vps = self._by_id.get(event.kvm_id)
        if vps is None:
            return
        self._state[event.kvm_id] = event.state
        if event.state is TargetState.INTENT:
            if event.kvm_id not in self._sent:
                first, _, count = self._sending.get(vps.wave, (event.at, event.at, 0))
                self._sending[vps.wave] = (first, event.at, count + 1)
            self._sent[event.kvm_id] = event.at
        elif event.state is TargetState.ACCEPTED:
            self._accepted[event.kvm_id] = event.at
        elif event.state is TargetState.READY and vps.waits:
            start = self._accepted.get(event.kvm_id, self._sent.get(event.kvm_id))
            if start is not None:
                self._seen.setdefault(vps.image, []).append(max(0.0, event.at - start))
        if event.state.final:
            members = self._waves[vps.wave]
            if all(self._state.get(m.kvm_id, TargetState.PENDING).final for m in members):
                self._wave_end[vps.wave] = event.at

    # ----------------------------------------------------------------- estimating

    def install_s(self, image: str) -> float:
        """The install seconds the model expects for ``image`` now."""
        seen = self._seen.get(image)
        if seen:
            return _p90(seen)
        return self._prior(image) * self._correction()

    def send_rate(self) -> float:
        """Sends per second: the run's own, measured over the latest wave that sent at least
        ``RATE_SAMPLES``, else the plan's."""
        for index in sorted(self._sending, reverse=True):
            first, last, count = self._sending[index]
            if count >= RATE_SAMPLES and last > first:
                # Never faster than the plan allows; slower when the run shows it is.
                return min(self._plan.send_rate, (count - 1) / (last - first))
        return self._plan.send_rate

    def remaining(self, now: float) -> float:
        """Seconds from ``now`` until every VPS of the plan is final (0 when all are)."""
        rate = self.send_rate()
        at = now
        previous_end: float | None = None
        for index in sorted(self._waves):
            members = self._waves[index]
            if index in self._wave_end:
                previous_end = self._wave_end[index]
                continue
            started = any(m.kvm_id in self._state for m in members)
            if not started and previous_end is not None:
                # Not started: it waits for the soak after the earlier wave.
                at = max(at, previous_end + self._plan.soak_s)
            end = at
            sending = at
            for m in members:
                state = self._state.get(m.kvm_id, TargetState.PENDING)
                if state.final:
                    continue
                install = self.install_s(m.image) if m.waits else 0.0
                if state is TargetState.PENDING:
                    sending += 1.0 / rate
                    end = max(end, sending + install)
                    continue
                since = self._accepted.get(m.kvm_id, self._sent.get(m.kvm_id, now))
                due = since + install
                end = max(end, due if due > now else now + OVERDUE_SHARE * install)
            at = previous_end = end
        return max(0.0, at - now)

    def _correction(self) -> float:
        """The median ratio observed/planned over the images seen (1 before any)."""
        ratios = [
            _p90(times) / prior
            for image, times in self._seen.items()
            if (prior := self._prior(image)) > 0
        ]
        return statistics.median(ratios) if ratios else 1.0


def _p90(values: Sequence[float]) -> float:
    """The 90th percentile by nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def plan_of(
    waves: Iterable[tuple[int, Iterable[tuple[str, str, bool]]]],
    *,
    rate: float,
    concurrency: int,
    soak_s: float,
) -> EtaPlan:
    """An ``EtaPlan`` from ``(wave, [(kvm_id, image, waits), ...])`` in send order."""
    vps = tuple(
        EtaVps(kvm_id, index, image, waits)
        for index, jobs in waves
        for kvm_id, image, waits in jobs
    )
    return EtaPlan(vps, rate=rate, concurrency=concurrency, soak_s=soak_s)


def priors(table: Mapping[str, float], default: Callable[[str], float]) -> Callable[[str], float]:
    """Install seconds per image: ``table``'s entry, else ``default(image)``."""
    return lambda image: table.get(image, default(image))


def model_for(
    waves: Sequence[WaveSpec],
    *,
    rate: float,
    concurrency: int,
    soak_s: float,
    prior: Callable[[str], float] = install_seconds,
) -> EtaModel:
    """The model of a run about to start: its waves' jobs in order, the plan's install time
    per image (``prior``, default ``run.plan.install_seconds``), the rate, concurrency and
    soak."""
    plan = plan_of(
        (
            (
                w.index,
                [(j.kvm_id, j.image, j.readiness is not ReadinessMode.NONE) for j in w.jobs],
            )
            for w in waves
        ),
        rate=rate,
        concurrency=concurrency,
        soak_s=soak_s,
    )
    model = EtaModel(plan, prior)
    for w in waves:
        for j in w.jobs:
            if j.accepted_already and j.accepted_at is not None:
                # Resume: accepted before, only its install is left (it sends no event).
                model.observe(TargetEvent(j.kvm_id, TargetState.ACCEPTED, w.index, j.accepted_at))
    return model
