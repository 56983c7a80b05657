"""The sweep's loop: evaluate the references and every point on an executor, keep the choice.

One loop for every executor (:class:`~.serial.SerialExecutor` here, :class:`~.distributed.
RayExecutor` on a cluster): it reads each job's outcome, records a failed point as a row with its
error (the choice ignores it), keeps the best passing merge so far when the executor left it on
disk, and installs the choice in ``out``.
"""

from __future__ import annotations

from pathlib import Path

from mergekit_safety.core.acceptance import NO_GATE, Gate
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.recipe.scoring import kept_scores
from mergekit_safety.sweep.choice import SweepPoint, close_to_chosen, select
from mergekit_safety.sweep.executor import Evaluator, Executor, Outcome, sweep_jobs
from mergekit_safety.sweep.grid import SweepPlan
from mergekit_safety.sweep.merging import (
    WEIGHT_FILES,
    Merge,
    evaluable,
    install,
    merge_adapter,
    merge_recipe,
)
from mergekit_safety.sweep.result import SweepResult
from mergekit_safety.sweep.serial import SerialExecutor

__all__ = [  # the names this module held before the loop and its parts were split up
    "WEIGHT_FILES",
    "Evaluator",
    "SweepPoint",
    "SweepResult",
    "close_to_chosen",
    "evaluable",
    "install",
    "merge_adapter",
    "merge_recipe",
    "run_sweep",
    "select",
]


def run_sweep(
    plan: SweepPlan,
    evaluator: Evaluator,
    executor: Executor | None = None,
    *,
    gate: Gate = NO_GATE,
    out: Path | None = None,
    merge_options: object = None,
    work_dir: Path | None = None,
    progress: bool = True,
    merge: Merge | None = None,
    adapter: bool = False,
) -> SweepResult:
    """Evaluate the references and every point of ``plan``; install the choice in ``out``.

    The choice: the point passing ``gate`` with the best ``gate.objective``
    (:func:`~.choice.select`). A reference that fails ends the sweep; a point that
    fails (both executors go on by default: Ray, and ``SerialExecutor``) is recorded in
    ``result.failed``. Without ``executor``, a :class:`~.serial.SerialExecutor` of
    ``merge_options``, ``work_dir``, ``progress``, ``merge`` and ``adapter`` runs the sweep.
    """
    if executor is None:
        if merge_options is None:
            raise TypeError("run_sweep needs an executor, or merge_options for a serial one")
        executor = SerialExecutor(merge_options, work_dir, progress, merge, adapter)
    elif merge_options is not None or work_dir is not None or merge is not None or adapter:
        raise TypeError("merge_options, work_dir, merge and adapter belong to the executor")
    name = out.resolve().name if out is not None else "merge"  # mergekit titles the card so
    references: dict[int, dict] = {}
    points: dict[int, SweepPoint] = {}
    failed: dict[int, str] = {}
    kept: tuple[SweepPoint, Outcome] | None = None
    with kept_scores(), executor.open(plan, evaluator, name) as run:  # one ρ pass per model set
        for outcome in run.run(sweep_jobs(plan)):
            job = outcome.job
            if outcome.error is not None:
                if job.kind == "reference":
                    raise ConfigError(f"evaluating {job.name} failed: {outcome.error}")
                failed[job.index] = outcome.error
                continue
            assert outcome.summary is not None
            summary = {**outcome.summary, "model": job.name}
            if job.kind == "reference":
                references[job.index] = summary
                continue
            point = points[job.index] = SweepPoint(plan.values[job.index], summary)
            if outcome.merged is None:
                continue
            so_far = [points[i] for i in sorted(points)]
            if out is not None and select(so_far, gate, plan.parameters) is point:
                if kept is not None:
                    run.discard(kept[1])
                kept = (point, outcome)
            else:
                run.discard(outcome)
        result = SweepResult(
            plan=plan,
            gate=gate,
            aligned=references[0],
            finetuned=[references[i] for i in range(1, len(plan.finetuned) + 1)],
            points=[points[i] for i in sorted(points)],
            failed=[(plan.values[i], failed[i]) for i in sorted(failed)],
        )
        result.chosen = select(result.points, gate, plan.parameters)
        if out is not None and result.chosen is not None:
            if kept is not None and kept[0] is result.chosen:
                assert kept[1].merged is not None
                install(kept[1].merged, out)
            else:
                run.write(plan.recipe_with(result.chosen.value), out)
            result.out = out
    return result
