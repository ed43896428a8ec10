"""Live progress of a run, as an ``EventSink`` watcher: a rich view, plain lines, JSON or nothing.

Modes (``choose_mode`` picks one from the stream and the options):

- ``live`` (a terminal): a ``rich`` view redrawn on events and once a second — a progress bar,
  per-wave counts (pending, sent, accepted, ready, failed, in doubt, skipped), the request
  rate, 429s, retries, session refreshes, why the run waits (``cli/waiting.py``) and an ETA
  from the plan's model corrected by the installs seen (``run/eta.py``; none without one).
  Pre-flight shows its own bar before the run's.
- ``plain`` (CI logs): pre-flight's progress (at most a line a second), a line whenever the
  reason the run waits changes, and one line per state change, ``12:03:04 kvm_100001
  vps-001 accepted (wave 1)`` (UTC). When more than ``max_lines_per_second`` changes
  arrive within one second of the clock, the rest of that second — and every following
  second that is as busy — is folded into one summary line per second: ``12:03:05 wave 2:
  340 accepted, 12 ready, 1 failed of 1000 — 48.9 req/s, 3 throttled``.
- ``json`` (``--log-format json``): one JSON object per state change for log shippers:
  ``{"ts", "level", "event": "target_state", "kvm_id", "hostname", "state", "wave",
  "reason"}``.
- ``quiet``: nothing.

Every VPS starts ``pending``; those events are counted, not printed. Progress only reads
events: it never changes what is recorded, and it never raises into the scheduler — a display
error is kept in ``error`` and the display goes silent.

This module picks the mode and drives the display (when to write, redraw, fold); what the
view counts is ``cli/view_state.py``, the text modes' lines ``cli/log_lines.py``, the live
view's look ``cli/live_view.py`` and why the run waits ``cli/waiting.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Literal, Self, TextIO, get_args

from rich.console import Console, RenderableType
from rich.live import Live

from orchestrator.cli.live_view import preflight_view, run_view
from orchestrator.cli.log_lines import hms, json_line, plain_line, preflight_json, summary_line
from orchestrator.cli.view_state import ViewState
from orchestrator.cli.waiting import preflight_line
from orchestrator.model import Clock, TargetEvent, TargetState
from orchestrator.report import duration
from orchestrator.run import RunStats
from orchestrator.run.eta import EtaModel

Mode = Literal["live", "plain", "quiet", "json"]
MODES: tuple[str, ...] = get_args(Mode)


def choose_mode(
    stream: TextIO, *, quiet: bool = False, log_format: str = "text", env: Mapping[str, str]
) -> Mode:
    """Return the mode for ``stream``: ``json`` for ``--log-format json``, ``quiet`` for
    ``--quiet``, ``live`` on a terminal (not ``TERM=dumb``, not under ``CI``), else ``plain``.
    """
    if log_format == "json":
        return "json"
    if quiet:
        return "quiet"
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream is no terminal
        tty = False
    if tty and env.get("TERM") != "dumb" and not env.get("CI"):
        return "live"
    return "plain"


class Progress(ViewState):
    """Shows a run's progress on ``stream`` in ``mode`` (see the module docstring).

    ``total`` is the number of VPSes of the run, ``waves`` maps each wave index to its size;
    ``stats`` gives the live numbers (settable later through the ``stats`` attribute, once the
    limiter, budget and session book exist); ``clock`` drives timestamps, the plain-mode
    rate limit and the ETA; ``hostnames`` maps kvm ids to host names for the lines;
    ``console`` overrides the rich console of the live view; ``redact`` filters reasons;
    ``eta`` is the plan's model of the run (no ETA is shown without one); ``phase`` (set by
    ``execute`` once the scheduler exists) says why the run waits.
    Use ``with progress:`` (or ``start()``/``stop()``) around the run, and run ``ticker()``
    in the run's task group so the view and the plain summaries move on quiet seconds.
    Raises ``ValueError`` for an unknown mode.
    """

    def __init__(
        self,
        total: int,
        waves: Mapping[int, int],
        *,
        stream: TextIO,
        mode: Mode,
        stats: RunStats | None = None,
        clock: Clock | None = None,
        hostnames: Mapping[str, str] | None = None,
        console: Console | None = None,
        max_lines_per_second: int = 20,
        redact: Callable[[str], str] | None = None,
        refresh_interval: float = 0.25,
        eta: EtaModel | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}; one of {', '.join(MODES)}")
        super().__init__(total, waves, stats=stats, clock=clock, hostnames=hostnames, eta=eta)
        self.mode: Mode = mode
        self.error: Exception | None = None
        #: The run's id once the journal has it (``execute`` sets it): every JSON line has it.
        self.run_id: str | None = None
        self._stream = stream
        self._console = console
        self._max_lines = max_lines_per_second
        self._redact = redact or str
        self._refresh_interval = refresh_interval
        # Plain mode: the clock second being counted, its changes, and how many were hidden.
        self._window: int | None = None
        self._in_window = 0
        self._hidden = 0
        self._summarizing = False
        self._live: Live | None = None
        self._last_refresh = -math.inf
        self._checked: tuple[int, int] | None = None
        self._checked_line = -math.inf
        self._said: tuple[str, ...] = ()

    # ----------------------------------------------------------------- the sink

    async def before_send(self, kvm_id: str, wave: int) -> None:
        """Nothing to do: progress only watches."""

    def emit(self, event: TargetEvent) -> None:
        """Count ``event`` and show it as the mode says. Never raises (see ``error``)."""
        try:
            if self.mode == "plain" and self.error is None:
                # Close the previous second first, so its summary does not count this event.
                self._roll(self._clock.monotonic())
            self._record(event)
            if self.error is None:
                self._show(event)
        except Exception as exc:  # a broken display must not stop a reinstall
            self.error = exc

    def preflight(self, done: int, total: int) -> None:
        """Show pre-flight's progress (``done`` of ``total`` VPSes checked): the live view's
        bar, or a plain/JSON line at most once a second and when it ends. Never raises."""
        try:
            self._checked = (done, total)
            if self.error is not None or self.mode == "quiet":
                return
            if self.mode == "live":
                self._start_live()
                self._refresh(force=done >= total)
                return
            now = self._clock.monotonic()
            if done < total and done and now - self._checked_line < 1.0:
                return
            self._checked_line = now
            if self.mode == "json":
                self._write(preflight_json(self._clock.time(), self.run_id, done, total))
            else:
                self._write(f"{hms(self._clock.time())} {preflight_line(done, total)}")
        except Exception as exc:  # a broken display must not stop a reinstall
            self.error = exc

    # ----------------------------------------------------------------- lifetime

    def start(self) -> None:
        """Start the clock of the ETA and, in live mode, the view. Never raises."""
        try:
            if self._started is None:
                self._started = self._clock.monotonic()
            self._start_live()
            self._refresh(force=True)
        except Exception as exc:
            self.error = exc

    def _start_live(self) -> None:
        """Start the live view once (pre-flight's, then the run's, on one ``Live``)."""
        if self.mode == "live" and self._live is None and self.error is None:
            console = self._console or Console(file=self._stream)
            self._live = Live(
                self.render(), console=console, auto_refresh=False,
                redirect_stdout=False, redirect_stderr=False,
            )  # fmt: skip
            self._live.start(refresh=True)

    def stop(self) -> None:
        """Show the last state (the pending plain summary, the final live view) and stop.
        Idempotent; never raises."""
        try:
            if self.mode == "plain" and self.error is None:
                self._roll(math.inf)
            live, self._live = self._live, None
            if live is not None:
                try:
                    live.update(self.render(), refresh=True)
                finally:
                    live.stop()
        except Exception as exc:
            self.error = exc

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def tick(self) -> None:
        """Move the display on without an event: redraw the live view, or print the plain
        summary of a second that has ended. Never raises."""
        try:
            if self.error is not None:
                return
            if self.mode == "plain":
                self._roll(self._clock.monotonic())
                self._say_waiting()
            elif self.mode == "live":
                self._refresh(force=True)
        except Exception as exc:
            self.error = exc

    async def ticker(self, interval: float = 1.0) -> None:
        """Call ``tick`` every ``interval`` seconds of the clock; never returns (cancel it)."""
        while True:
            await self._clock.sleep(interval)
            self.tick()

    # ----------------------------------------------------------------- internals

    def _show(self, event: TargetEvent) -> None:
        if self.mode == "live":
            self._refresh()
            return
        if self.mode == "quiet" or event.state is TargetState.PENDING:
            return
        host = self._hostnames.get(event.kvm_id)
        wave = self._wave_of.get(event.kvm_id, event.wave)
        if self.mode == "json":
            reason = self._redact(event.reason)
            self._write(json_line(event, run_id=self.run_id, host=host, wave=wave, reason=reason))
            return
        self._in_window += 1
        if not self._summarizing and self._in_window <= self._max_lines:
            self._write(plain_line(event, host, wave, self._redact(event.reason)))
        else:
            self._summarizing = True
            self._hidden += 1

    def _roll(self, now: float) -> None:
        """Close the plain-mode second before ``now``: print its summary if changes were
        hidden, and keep summarizing only while the seconds stay busy."""
        window = math.floor(now) if math.isfinite(now) else None
        if window is not None and (self._window is None or window == self._window):
            self._window = window
            return
        if self._hidden:
            wave = self._current if self._current is not None else 0
            counts, snap = self.counts(wave), self.stats.snapshot()
            self._write(summary_line(self._clock.time(), wave, counts, self._size(wave), snap))
        busy = self._in_window > self._max_lines
        next_second = window is not None and self._window is not None and window == self._window + 1
        self._summarizing = busy and next_second
        self._window, self._in_window, self._hidden = window, 0, 0

    def _say_waiting(self) -> None:
        """Plain mode: a line when the reasons the run waits change (not their countdowns)."""
        found = self.waiting()
        kinds = tuple(r.kind for r in found)
        if kinds != self._said:
            self._said = kinds
            eta = self.eta()
            # A CI log has no live ETA: each change of phase says it.
            tail = "" if eta is None else f" (ETA {duration(eta)})"
            for reason in found:
                self._write(f"{hms(self._clock.time())} waiting: {reason.text}{tail}")

    def _write(self, line: str) -> None:
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:  # a closed pipe: go quiet, keep running
            self.error = exc

    def _refresh(self, *, force: bool = False) -> None:
        if self._live is None:
            return
        now = self._clock.monotonic()
        # Redraw at most every refresh_interval: a thousand events a second must not mean a
        # thousand redraws.
        if not force and now - self._last_refresh < self._refresh_interval:
            return
        self._last_refresh = now
        self._live.update(self.render(), refresh=True)

    def render(self) -> RenderableType:
        """Return the live view as a rich renderable (``cli/live_view.py``): pre-flight's bar
        before the run starts, then bar and ETA, per-wave table, stats, why it waits."""
        if self._started is None and self._checked is not None:
            return preflight_view(*self._checked)
        return run_view(
            finals=self._finals,
            total=self.total,
            eta=self.eta(),
            waves=[(w, self.counts(w), self._size(w)) for w in sorted(self._counts)],
            snap=self.stats.snapshot(),
            reasons=self.waiting(),
        )
