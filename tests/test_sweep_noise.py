"""The sweep's reports carry each rate's Wilson interval and say when the choice is within noise.

The issue's case: λ 0.3 chosen for 10 of 40 task answers against 4 of 40 — intervals
[0.14, 0.40] and [0.04, 0.23] overlap, so the choice cannot be told from that point.
"""

from __future__ import annotations

import json

from helpers import REPO

from mergekit_safety.core.acceptance import Gate
from mergekit_safety.tuning.choice import SweepPoint
from mergekit_safety.tuning.grid import plan_sweep
from mergekit_safety.tuning.grid_sampler import SweepResult
from mergekit_safety.tuning.sweep_report import write_reports


def summary(refusal: int, task: int, n: int = 40) -> dict:
    return {
        "refusal_rate": refusal / n,
        "over_refusal_rate": 0.0,
        "task_accuracy": task / n,
        "asr": 1 - refusal / n,
        "n_harmful": n,
        "n_benign": n,
        "n_task": n,
    }


def result_with(tasks: dict[float, int]) -> SweepResult:
    plan = plan_sweep(REPO / "recipes" / "safe_linear.yml", "weight", sorted(tasks))
    result = SweepResult(
        plan, Gate(min_refusal=0.9, max_over_refusal=0.05), summary(40, 2), [summary(5, 30)]
    )
    result.points = [SweepPoint(value, summary(40, task)) for value, task in sorted(tasks.items())]
    result.chosen = max(result.points, key=lambda p: p.metrics["task_accuracy"])
    return result


def test_choice_within_noise_is_reported(tmp_path):
    paths = write_reports(result_with({0.2: 4, 0.3: 10}), tmp_path)
    record = json.loads(paths["json"].read_text())
    assert record["chosen"]["weight"] == 0.3
    low, high = record["chosen"]["task_accuracy_ci"]
    assert round(low, 2) == 0.14 and round(high, 2) == 0.40
    assert record["within_noise"] == [{"weight": 0.2}]
    md = paths["md"].read_text()
    assert "within noise of the choice" in md and "weight=0.2" in md
    assert "0.250 [0.14, 0.40]" in md  # the chosen point's task accuracy with its interval


def test_a_clear_choice_says_so(tmp_path):
    paths = write_reports(result_with({0.2: 4, 0.3: 30}), tmp_path)
    record = json.loads(paths["json"].read_text())
    assert record["within_noise"] == []
    assert "no other passing point is within noise" in paths["md"].read_text()
    refusal_ci = record["references"]["aligned"]["refusal_rate_ci"]
    assert refusal_ci[1] == 1.0 and 0.9 < refusal_ci[0] < 0.92  # 40 of 40: [0.912, 1]
