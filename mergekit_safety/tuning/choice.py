"""The choice rule: the passing point with the best objective, ties toward the fine-tune.

Picking the winning point of a sweep or a search is "choose"; "selection" is reserved for the
``top_k`` choice of matrices inside a method (:mod:`mergekit_safety.core.selection`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from mergekit_safety.core.acceptance import Gate, metric, within_noise
from mergekit_safety.tuning.grid import SWEEPABLE, Value


@dataclass(frozen=True)
class SweepPoint:
    """One swept value (a tuple for a grid, in --set order) and its evaluation summary."""

    value: Value
    metrics: Mapping[str, Any]

    @property
    def values(self) -> tuple[float, ...]:
        return self.value if isinstance(self.value, tuple) else (self.value,)


class Point(Protocol):
    """What the rule reads of a point: its values (in the sampler's key order), its metrics."""

    @property
    def values(self) -> tuple[float, ...]: ...

    @property
    def metrics(self) -> Mapping[str, Any]: ...


P = TypeVar("P", bound=Point)


def directions(parameters: str | Sequence[str]) -> list[int]:
    """Each sweepable parameter's side: +1 where a larger value keeps more of the fine-tune."""
    names = [parameters] if isinstance(parameters, str) else list(parameters)
    return [SWEEPABLE[name].toward_finetuned for name in names]


def choose(points: Sequence[P], gate: Gate, toward_finetuned: Sequence[int]) -> P | None:
    """The point passing ``gate`` with the best ``gate.objective`` (task accuracy, or an
    ``lm_eval:TASK:METRIC`` that is higher-is-better), or None if none passes.

    A missing value ranks below any number. Ties go to the fine-tuned side, value by value in
    order (see ``TIE_BREAK``): ``toward_finetuned`` gives each value's sign (+1: larger keeps more
    of the fine-tune; :func:`directions` for sweepable parameters); then to the earlier point.
    """
    passing = [p for p in points if gate.passes(p.metrics)]
    if not passing:
        return None

    def rank(point: P) -> tuple[float, ...]:
        accuracy = metric(point.metrics, gate.objective)
        sides = (d * v for d, v in zip(toward_finetuned, point.values, strict=True))
        return (-math.inf if accuracy is None else accuracy, *sides)

    return max(passing, key=rank)


def close_to_chosen(points: Sequence[P], chosen: P | None, gate: Gate) -> list[P]:
    """The other passing points whose ``objective`` is within noise of the choice's.

    Within noise: their 95 % Wilson intervals overlap. Such a choice is one of several the data
    cannot rank; a larger task set, not more points, would separate them.
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
