"""A sweep's outcome: every evaluation, the failed points and the choice, as flat rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_safety.core.acceptance import Gate
from mergekit_safety.sweep.choice import SweepPoint
from mergekit_safety.sweep.grid import SweepPlan, Value


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
                    "value": list(point.value) if isinstance(point.value, tuple) else point.value,
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
                    "value": list(value) if isinstance(value, tuple) else value,
                    **self.plan.as_dict(value),
                    "model": self.plan.label(value),
                    "error": error,
                    "passes": False,
                    "chosen": False,
                }
            )
        return rows
