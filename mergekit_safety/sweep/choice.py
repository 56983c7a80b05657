"""The choice rule: the passing point with the best objective, ties toward the fine-tune."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergekit_safety.core.acceptance import Gate, metric, within_noise
from mergekit_safety.sweep.grid import SWEEPABLE, Value


@dataclass(frozen=True)
class SweepPoint:
    """One swept value (a tuple for a grid, in --set order) and its evaluation summary."""

    value: Value
    metrics: Mapping[str, Any]

    @property
    def values(self) -> tuple[float, ...]:
        return self.value if isinstance(self.value, tuple) else (self.value,)


def select(
    points: Sequence[SweepPoint],
    gate: Gate,
    parameter: str | Sequence[str],
    *,
    toward_finetuned: Sequence[int] | None = None,
) -> SweepPoint | None:
    """The point passing ``gate`` with the best ``gate.objective`` (task accuracy, or an
    ``lm_eval:TASK:METRIC`` that is higher-is-better), or None if none passes.

    A missing value ranks below any number. Ties go to the fine-tuned side, parameter by
    parameter in the order given (see ``TIE_BREAK``): ``toward_finetuned`` gives each parameter's
    sign (+1: larger keeps more of the fine-tune), by default ``SWEEPABLE``'s.
    """
    names = [parameter] if isinstance(parameter, str) else list(parameter)
    directions = (
        [SWEEPABLE[name].toward_finetuned for name in names]
        if toward_finetuned is None
        else list(toward_finetuned)
    )
    passing = [p for p in points if gate.passes(p.metrics)]
    if not passing:
        return None

    def rank(point: SweepPoint) -> tuple[float, ...]:
        accuracy = metric(point.metrics, gate.objective)
        sides = (d * v for d, v in zip(directions, point.values, strict=True))
        return (-math.inf if accuracy is None else accuracy, *sides)

    return max(passing, key=rank)


def close_to_chosen(
    points: Sequence[SweepPoint],
    chosen: SweepPoint | None,
    gate: Gate,
) -> list[SweepPoint]:
    """The other passing points whose ``objective`` is within noise of the choice's.

    Within noise: their 95 % Wilson intervals overlap. Such a choice is one of several the data
    cannot rank; a larger task set, not the sweep, would separate them.
    """
    if chosen is None:
        return []
    return [
        point
        for point in points
        if point is not chosen
        and gate.passes(point.metrics)
        and within_noise(point.metrics, chosen.metrics, gate.objective)
    ]
