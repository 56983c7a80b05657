"""The serial executor: every reference and point merged and evaluated here, one after another.

Everything it writes lives in one temporary directory (under ``work_dir``, default ``$TMPDIR``),
removed however the run ends, Ctrl-C included; the loop keeps only the best passing merge so far,
so the sweep needs room for two merges.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_safety.recipe.lora_cache import lora_cache
from mergekit_safety.sweep.executor import Evaluator, Job, Outcome, describe_error
from mergekit_safety.sweep.grid import SweepPlan
from mergekit_safety.sweep.merging import Merge, evaluable, merge_adapter, merge_recipe, references


@dataclass
class SerialExecutor:
    """Merge and evaluate in this process, in plan order.

    ``adapter``: merge every point in adapter space (:func:`~.merging.merge_adapter`) and evaluate
    the ``aligned+adapter`` references through peft, so no full model is written.
    ``keep_going`` (default, as on Ray): a point whose merge or evaluation raises is recorded as
    failed and the sweep goes on; off, the first error ends the sweep. A failed reference, and
    Ctrl-C, end it either way.
    """

    merge_options: Any
    work_dir: Path | None = None
    progress: bool = True
    merge: Merge | None = None
    adapter: bool = False
    keep_going: bool = True

    @contextlib.contextmanager
    def open(self, plan: SweepPlan, evaluator: Evaluator, name: str) -> Iterator[_SerialRun]:
        from tqdm.auto import tqdm

        merge = merge_adapter if self.adapter else (self.merge or merge_recipe)
        steps = tqdm(
            total=1 + len(plan.finetuned) + len(plan.values),  # every point of the grid
            desc=f"sweep {plan.parameter}",
            unit="model",
            disable=not self.progress,
        )
        with (
            steps,
            tempfile.TemporaryDirectory(prefix="mergekit-safety-sweep-", dir=self.work_dir) as tmp,
            lora_cache(
                references(plan.recipe),
                getattr(self.merge_options, "lora_merge_cache", None) or str(Path(tmp) / "lora"),
            ) as cache,
        ):
            options = self.merge_options.model_copy(update={"lora_merge_cache": cache})
            yield _SerialRun(self, Path(tmp), name, merge, options, evaluator, steps)


@dataclass
class _SerialRun:
    executor: SerialExecutor
    root: Path
    name: str
    merge: Merge
    options: Any
    evaluator: Evaluator
    steps: Any

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        for job in jobs:
            yield self._one(job)

    def _one(self, job: Job) -> Outcome:
        where = None
        try:
            if job.kind == "reference":
                path = job.name if self.executor.adapter else evaluable(job.name, self.options)
            else:
                assert job.recipe is not None
                where = self.root / f"{job.index}-{job.role}" / self.name  # the evaluator shows it
                self.steps.set_postfix_str(f"merging {job.role}")
                self.merge(job.recipe, where, self.options)
                path = str(where)
            self.steps.set_postfix_str(f"evaluating {job.role}")
            summary = self.evaluator(path)
        except Exception as error:
            if not self.executor.keep_going:
                raise
            if where is not None:
                shutil.rmtree(where.parent, ignore_errors=True)
            outcome = Outcome(job, error=describe_error(error))
        else:
            outcome = Outcome(job, summary, merged=where)
        self.steps.update()
        return outcome

    def discard(self, outcome: Outcome) -> None:
        if outcome.merged is not None:
            shutil.rmtree(outcome.merged.parent)

    def write(self, recipe: Mapping[str, Any], out: Path) -> None:
        from mergekit_safety.sweep.merging import install

        where = self.root / "chosen" / self.name
        self.merge(recipe, where, self.options)
        install(where, out)
