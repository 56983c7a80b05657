"""The grid sampler: `sweep` is the engine with every grid point in one batch; its rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_safety.core.acceptance import NO_GATE, Gate
from mergekit_safety.tuning.choice import SweepPoint, directions
from mergekit_safety.tuning.engine import Evaluator, Job, Outcome, Runner, tune
from mergekit_safety.tuning.grid import SweepPlan, Value


class GridSampler:
    """Every point of a grid, in one batch: the sampler of a sweep.

    ``grid``: a :class:`~.grid.SweepPlan`, or anything with its ``values``, ``recipe_with``,
    ``label``, ``parameter``, ``aligned``, ``finetuned`` and ``recipe``.
    """

    def __init__(self, grid: Any, toward_finetuned: Sequence[int] | None = None) -> None:
        self.grid = grid
        self.references = [grid.aligned, *grid.finetuned] if grid.aligned else []
        self.template = grid.recipe
        self.toward_finetuned = list(toward_finetuned or directions(grid.parameters))
        self.total, self.done = len(grid.values), 0
        self.label = f"sweep {grid.parameter}"
        self.asked = False
        self.evaluated: dict[int, SweepPoint] = {}
        self.failed: dict[int, str] = {}

    def known_references(self) -> None:
        return None

    def keep_references(self, summaries: list[dict[str, Any]]) -> None:
        """Nothing to keep: a sweep is not resumed."""

    def ask(self) -> list[Job]:
        if self.asked:
            return []
        self.asked = True
        jobs = []
        for index, value in enumerate(self.grid.values):
            label = self.grid.label(value)
            jobs.append(Job("point", index, label, label, self.grid.recipe_with(value)))
        return jobs

    def tell(self, outcome: Outcome) -> SweepPoint | None:
        index = outcome.job.index
        if outcome.error is not None:
            self.failed[index] = outcome.error
            return None
        summary = {**(outcome.summary or {}), "model": outcome.job.name}
        point = self.evaluated[index] = SweepPoint(self.grid.values[index], summary)
        return point

    def points(self) -> list[SweepPoint]:
        return [self.evaluated[i] for i in sorted(self.evaluated)]

    def failures(self) -> list[tuple[Value, str]]:
        return [(self.grid.values[i], self.failed[i]) for i in sorted(self.failed)]

    def recipe(self, point: SweepPoint) -> dict[str, Any]:
        return self.grid.recipe_with(point.value)


def run_sweep(
    plan: SweepPlan,
    evaluator: Evaluator,
    runner: Runner,
    *,
    gate: Gate = NO_GATE,
    out: Path | None = None,
    progress: bool = True,
) -> SweepResult:
    """Evaluate the references and every point of ``plan`` on ``runner`` (:mod:`.runners`);
    choose the point passing ``gate`` with the best ``gate.objective``; install it in ``out``.

    A reference that fails ends the sweep; a point that fails is recorded in ``result.failed``.
    """
    sampler = GridSampler(plan)
    tuned = tune(sampler, runner, evaluator, gate=gate, out=out, progress=progress)
    return SweepResult(plan, gate, tuned.references[0], tuned.references[1:], sampler.points(),
                       tuned.chosen, tuned.out, sampler.failures())  # fmt: skip


@dataclass
class SweepResult:
    """Every evaluation of a sweep and its choice, ready for the reports and the model card."""

    plan: SweepPlan
    gate: Gate
    aligned: dict[str, Any]
    finetuned: list[dict[str, Any]]
    points: list[SweepPoint] = field(default_factory=list)
    chosen: SweepPoint | None = None
    out: Path | None = None
    failed: list[tuple[Value, str]] = field(default_factory=list)
    """Points whose merge or evaluation failed, with the error (the run went on without them)."""

    def rows(self) -> list[dict[str, Any]]:
        """One flat record per model: the reference models first, then each swept value."""
        rows = [{"kind": "aligned", "value": None, **self.aligned}]
        rows += [{"kind": "finetuned", "value": None, **summary} for summary in self.finetuned]
        for point in self.points:
            rows.append(
                {
                    "kind": "merged",
                    "value": _plain(point.value),
                    **self.plan.as_dict(point.value),
                    **point.metrics,
                    "passes": self.gate.passes(point.metrics),
                    "chosen": point is self.chosen,
                }
            )
        for value, error in self.failed:
            rows.append(
                {
                    "kind": "failed",
                    "value": _plain(value),
                    **self.plan.as_dict(value),
                    "model": self.plan.label(value),
                    "error": error,
                    "passes": False,
                    "chosen": False,
                }
            )
        return rows


def _plain(value: Value) -> Any:
    return list(value) if isinstance(value, tuple) else value
