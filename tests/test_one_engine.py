"""``sweep`` and ``search`` are one engine: the grid and Optuna's sampler go through the same loop
(:func:`mergekit_safety.tuning.engine.tune`) on the same runner, and a failed point is recorded
the same way by both: the runner's one-line error, the run going on, the choice ignoring it."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
from helpers import write_recipe

pytest.importorskip("optuna")

from mergekit_safety.core.acceptance import Gate  # noqa: E402
from mergekit_safety.tuning import engine  # noqa: E402
from mergekit_safety.tuning.runners import InMemory, OnDisk, SerialRunner  # noqa: E402

ERROR = "ValueError: no evaluation here, on purpose"


class Scores:
    """An evaluator without a model: every model passes, task accuracy 0.5; ``fails`` raises."""

    loader = None  # the resident network is lent here for a search's trial

    def __init__(self, fails):
        self.fails = fails
        self.calls: list[str] = []

    def __call__(self, path: str) -> dict:
        self.calls.append(path)
        if self.fails(path):
            raise ValueError("no evaluation here, on purpose")
        return {"refusal_rate": 1.0, "over_refusal_rate": 0.0, "task_accuracy": 0.5,
                "n_harmful": 1, "n_benign": 1, "n_task": 1}  # fmt: skip


class Watched:
    """A runner that notes which function drives each of its runs."""

    def __init__(self, runner):
        self.runner = runner
        self.drivers: set[tuple[str, str]] = set()

    @contextlib.contextmanager
    def open(self, template, evaluator, name, status=None):
        with self.runner.open(template, evaluator, name, status) as run:
            yield _WatchedRun(run, self.drivers)


class _WatchedRun:
    def __init__(self, run, drivers):
        self.inner, self.drivers = run, drivers

    def run(self, jobs):
        caller = sys._getframe(1).f_code  # the frame that iterates this generator
        self.drivers.add((caller.co_filename, caller.co_name))
        yield from self.inner.run(jobs)

    def discard(self, outcome):
        self.inner.discard(outcome)

    def write(self, recipe, out):
        self.inner.write(recipe, out)


def gated_recipe(family, tmp_path: Path) -> Path:
    return write_recipe(tmp_path / "recipe.yml", {
        "merge_method": "safe_linear", "base_model": str(family["aligned"]),
        "models": [{"model": str(family["finetuned"]), "parameters": {"weight": 0.7}},
                   {"model": str(family["unaligned"]), "parameters": {"role": "unaligned"}}],
        "parameters": {"threshold": 0.35}, "dtype": "float32"})  # fmt: skip


def test_sweep_and_search_share_the_loop_and_record_a_failed_point_alike(family, tmp_path):
    from mergekit.options import MergeOptions

    from mergekit_safety.tuning.grid import plan_sweep
    from mergekit_safety.tuning.grid_sampler import run_sweep
    from mergekit_safety.tuning.optuna_sampler import run_search
    from mergekit_safety.tuning.space import check_space, parse_param
    from mergekit_safety.tuning.study import Budget, SearchPlan, open_study

    recipe = gated_recipe(family, tmp_path)
    gate = Gate(min_refusal=0.5)
    points: list[str] = []

    def second_point(path: str) -> bool:  # a sweep's point is a merge in a point-* directory
        if "point-" in path:
            points.append(path)
        return len(points) == 2 and points[-1] == path

    sweep_runner = Watched(SerialRunner(MergeOptions(quiet=True), OnDisk(), tmp_path))
    swept = run_sweep(plan_sweep(recipe, "weight", [0.3, 0.6, 0.9]), Scores(second_point),
                      sweep_runner, gate=gate, out=tmp_path / "swept", progress=False)  # fmt: skip

    space, checked = check_space([parse_param("weight=0:1")], recipe)
    plan, budget = SearchPlan(space, checked), Budget(3, startup_trials=2)
    search_runner = Watched(SerialRunner(MergeOptions(quiet=True), InMemory("cpu"), tmp_path))
    found = run_search(open_study(plan, budget, gate), plan, budget, gate,
                       Scores(lambda name: name == "trial 1"), None, search_runner,
                       tmp_path / "searched", progress=False)  # fmt: skip

    loop = {(engine.__file__, "tune"), (engine.__file__, "evaluate_references")}
    assert sweep_runner.drivers == search_runner.drivers == loop
    assert swept.failed == [(0.6, ERROR)]  # the point's value and the runner's one line
    assert [(t.number, t.state, t.error) for t in found.trials] == [
        (0, "complete", None), (1, "failed", ERROR), (2, "complete", None)]  # fmt: skip
    assert [p.value for p in swept.points] == [0.3, 0.9]
    assert swept.chosen is not None and swept.chosen.value == 0.9  # ties: the larger weight
    assert found.chosen is not None and found.chosen.number in (0, 2)
    for out in (tmp_path / "swept", tmp_path / "searched"):
        assert (out / "model.safetensors").is_file(), out
    assert [p.name for p in tmp_path.glob("mergekit-safety-*")] == []  # nothing left behind
