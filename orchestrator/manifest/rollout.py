"""The ``rollout`` section of a manifest: read into a ``Rollout``, its waves checked against
the size of the fleet.

``read_rollout`` validates the section (``manifest_schema.RolloutModel``) and builds the
``fleet.Rollout``; when only other rollout fields are wrong it still returns the waves, so that
they can be checked too. Waves are cumulative (each says how much of the fleet is done after
it), so ``check_waves`` needs the number of VPSes and runs once the ``vps`` list is read: each
wave must cover more than the one before, and the last all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from orchestrator import fleet as f
from orchestrator.manifest.check import Reporter
from orchestrator.manifest.schema import RolloutModel, WavesModel
from orchestrator.units import CountOrFraction, CountOrFractions
from orchestrator.yamldoc import FieldPath


def read_rollout(report: Reporter, data: dict[Any, Any]) -> f.Rollout | CountOrFractions | None:
    """Return the rollout; when only other rollout fields are wrong, just its waves."""
    raw = data.get("rollout") or {}
    before = len(report.problem_paths)
    model = report.validate(RolloutModel, raw, ("rollout",))
    if model is None:
        # Still check the waves against the fleet if they themselves were fine.
        waves_wrong = report.problems_under(("rollout", "waves"), before)
        if not waves_wrong and isinstance(raw, dict) and "waves" in raw:
            try:
                return tuple(WavesModel.model_validate({"waves": raw["waves"]}).waves)
            except ValidationError:  # pragma: no cover - reported above
                return None
        return None
    if not model.waves:
        report.problem(("rollout", "waves"), "give at least one wave, e.g. [1, '100%']")
        return None
    if model.in_doubt is f.InDoubtPolicy.REPORT and model.in_doubt_window is not None:
        report.warn(
            ("rollout", "in_doubt_window"),
            "has no effect with in_doubt: report (it applies to resend-after-window)",
        )
    return f.Rollout(
        concurrency=model.concurrency,
        rate_per_s=model.rate,
        waves=tuple(model.waves),
        soak_s=model.soak,
        wave_budget=model.failure_budget.wave,
        run_budget=model.failure_budget.run,
        vps_deadline_s=model.vps_deadline,
        in_doubt=model.in_doubt or f.InDoubtPolicy.REPORT,
        in_doubt_default=model.in_doubt is None,
        in_doubt_window_s=model.in_doubt_window,
        rto_s=model.rto,
    )


def check_waves(report: Reporter, waves: Sequence[CountOrFraction], total: int) -> None:
    """Waves are cumulative: each must cover more than the last, the last all of them."""
    base: FieldPath = ("rollout", "waves")
    previous = 0
    for i, wave in enumerate(waves):
        covered = wave.resolve(total)
        earlier = waves[i - 1] if i > 0 else None
        same_kind = earlier is not None and earlier.is_fraction == wave.is_fraction
        if earlier is not None and (
            (same_kind and _amount(wave) <= _amount(earlier)) or covered < previous
        ):
            report.problem(
                (*base, i),
                f"wave {i + 1} ({wave}) does not grow past wave {i} ({earlier}); waves are "
                "cumulative, so each must cover more of the fleet than the one before",
            )
        elif wave.count is not None and wave.count >= total and i < len(waves) - 1:
            report.warn((*base, i), f"wave {i + 1} ({wave}) already covers all {total} VPSes")
        previous = max(previous, covered)
    last = waves[-1].resolve(total)
    if last < total:
        report.problem(
            (*base, len(waves) - 1),
            f"the last wave ({waves[-1]}) covers {last} of {total} VPSes; the last wave "
            "must reach all of them: end the list with '100%'",
        )


def _amount(wave: CountOrFraction) -> float:
    return float(wave.count) if wave.count is not None else float(wave.fraction or 0.0)
