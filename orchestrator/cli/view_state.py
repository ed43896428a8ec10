"""What the progress view knows of a run: each VPS's state and wave, the counts per wave and
state, the VPSes accepted and not final yet, the ETA and why the run waits.

Counting only: ``cli/progress.py`` feeds it the run's events and shows it in one of its modes;
nothing here writes to a stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from orchestrator.cli.live_view import COLUMNS
from orchestrator.cli.waiting import Reason, WaveWait, reasons
from orchestrator.clock import SystemClock
from orchestrator.model import Clock, TargetEvent, TargetState
from orchestrator.run import RunStats
from orchestrator.run.eta import EtaModel
from orchestrator.run.phase import RunPhase


class ViewState:
    """A run's counts as its events tell them (the base of ``Progress``).

    ``total`` is the number of VPSes of the run, ``waves`` maps each wave index to its size;
    ``stats`` gives the live numbers (settable later through the ``stats`` attribute);
    ``clock`` drives the ETA; ``hostnames`` maps kvm ids to host names; ``eta`` is the plan's
    model of the run (no ETA without one).
    """

    def __init__(
        self,
        total: int,
        waves: Mapping[int, int],
        *,
        stats: RunStats | None = None,
        clock: Clock | None = None,
        hostnames: Mapping[str, str] | None = None,
        eta: EtaModel | None = None,
    ) -> None:
        self.total = total
        self.stats = stats or RunStats()
        self._sizes = dict(waves)
        self._clock: Clock = clock or SystemClock()
        self._hostnames = dict(hostnames or {})
        self._state: dict[str, TargetState] = {}
        self._wave_of: dict[str, int] = {}
        self._counts: dict[int, Counter[TargetState]] = {w: Counter() for w in self._sizes}
        self._finals = 0
        self._current: int | None = None
        self._started: float | None = None
        self._eta = eta
        #: The scheduler's phase, once the run has one (``execute`` sets it).
        self.phase: RunPhase | None = None
        self._accepted_at: dict[str, float] = {}

    # ----------------------------------------------------------------- reading

    @property
    def done(self) -> int:
        """How many VPSes are in a final state."""
        return self._finals

    def counts(self, wave: int | None = None) -> dict[TargetState, int]:
        """VPSes per state, of ``wave`` or of the whole run; ``pending`` includes VPSes not
        heard of yet."""
        waves = list(self._counts) if wave is None else [wave]
        out = {s: sum(self._counts.get(w, Counter())[s] for w in waves) for s in COLUMNS}
        size = self.total if wave is None else self._size(wave)
        heard = sum(n for s, n in out.items() if s is not TargetState.PENDING)
        out[TargetState.PENDING] = max(0, size - heard)
        return out

    def eta(self) -> float | None:
        """Seconds until every VPS is final, from the plan's model corrected by what the run
        saw (None without a model or before the run started; never from completions alone)."""
        if self._eta is None or self._started is None:
            return None
        if self._finals >= self.total:
            return 0.0
        return self._eta.remaining(self._clock.time())

    def waiting(self) -> list[Reason]:
        """Why the run waits now (``cli/waiting.py``), most pressing first; nothing once
        every VPS is final."""
        if self.total and self._finals >= self.total:
            return []
        wave = self.phase.wave if self.phase is not None and self.phase.wave else self._current
        wait = None
        if wave is not None:
            counts = self.counts(wave)
            slowest = min(
                (k for k, w in self._wave_of.items() if w == wave and k in self._accepted_at),
                key=self._accepted_at.__getitem__,
                default=None,
            )
            wait = WaveWait(
                wave,
                waiting=counts[TargetState.ACCEPTED],
                sending=counts[TargetState.PENDING] + counts[TargetState.INTENT],
                slowest=slowest,
                slowest_since=None if slowest is None else self._accepted_at[slowest],
            )
        snap = self.stats.snapshot()
        return reasons(self.phase, snap, wait, self._clock.time(), self._hostnames)

    def _size(self, wave: int) -> int:
        return self._sizes.get(wave, sum(self._counts.get(wave, Counter()).values()))

    def _record(self, event: TargetEvent) -> None:
        """Count ``event``: its VPS's state, wave, acceptance time, and the ETA model."""
        if self._started is None:
            self._started = self._clock.monotonic()
        # The first event of a VPS has its real wave; a send cancelled mid-flight comes as 0.
        wave = self._wave_of.setdefault(event.kvm_id, event.wave)
        counts = self._counts.setdefault(wave, Counter())
        previous = self._state.get(event.kvm_id)
        if previous is not None:
            counts[previous] -= 1
            self._finals -= int(previous.final)
        counts[event.state] += 1
        self._finals += int(event.state.final)
        self._state[event.kvm_id] = event.state
        self._current = wave
        if event.state is TargetState.ACCEPTED:
            self._accepted_at.setdefault(event.kvm_id, event.at)
        elif event.state.final:
            self._accepted_at.pop(event.kvm_id, None)
        if self._eta is not None:
            self._eta.observe(event)
