"""Where the loop's jobs run — here (:class:`SerialRunner`) or on Ray (:class:`RayRunner`) — and
how a point is merged: the runner's option, not another engine.

- :class:`OnDisk` (``sweep``): each point merged into a directory by mergekit's own ``run_merge``
  (or in adapter space, as ``mergekit-safety adapter``) and evaluated from there. Serially the
  merge stays on disk for the loop to keep (the best passing one so far) or remove, so a run needs
  room for two merges; on Ray each point is a task holding one CPU (or one GPU) that removes its
  merge when it returns, and the choice is merged once more on the driver.
- :class:`InMemory` (``search``): each point merged by mergekit's planner and executor into a
  model loaded once (:class:`~.resident.ResidentMerge`), evaluated without a write or a reload; on
  Ray, ``actors`` actors hold one resident model each. The choice is merged to disk by
  ``run_merge``.

A reference is evaluated from its directory (its LoRA merged first) either way. A job that raises
becomes a failed outcome with its error (one line); Ctrl-C and SIGTERM end the run, remove what it
wrote and cancel every Ray task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_safety.tuning.engine import Evaluator, Job, Outcome, describe_error
from mergekit_safety.tuning.merging import Merge, evaluable, install, merge_adapter, merge_recipe

PREFIX = "mergekit-safety-"


@dataclass(frozen=True)
class OnDisk:
    """Merge each point to disk and evaluate the directory (``merge``: mergekit's ``run_merge``
    by default). ``adapter``: merge in adapter space and evaluate the ``aligned+adapter``
    references through peft, so no full model is written."""

    merge: Merge | None = None
    adapter: bool = False

    def merger(self) -> Merge:
        return merge_adapter if self.adapter else (self.merge or merge_recipe)


@dataclass(frozen=True)
class InMemory:
    """Merge each point in memory into a model loaded once on ``device`` in ``dtype``."""

    device: str
    dtype: str | None = None

    def merger(self) -> Merge:
        return merge_recipe


How = OnDisk | InMemory


class Worker:
    """Evaluates one job at a time, in this process or a Ray worker's.

    Each job gets a scratch directory under ``root``; its merge lives there (kept when ``keep``
    and the job succeeded, for the loop to keep or discard), as do merged LoRA inputs when
    ``options`` names no ``lora_merge_cache``.
    """

    def __init__(self, how: How, evaluator: Evaluator, options: Any, root: Path, name: str, *,
                 keep: bool, status: Any = None) -> None:  # fmt: skip
        self.how, self.evaluator, self.options = how, evaluator, options
        self.root, self.name, self.keep = root, name, keep
        self.status = status or (lambda _text: None)
        self.resident: Any = None

    def __call__(self, job: Job) -> Outcome:
        if isinstance(self.how, InMemory) and job.kind == "point" and self.resident is None:
            self._load(job.recipe)  # after the references: one model in memory at a time
        self.root.mkdir(parents=True, exist_ok=True)  # on another node: the same path, its disk
        scratch = Path(tempfile.mkdtemp(prefix=f"{job.kind}-", dir=self.root))
        options = self.options
        if options.lora_merge_cache is None:
            options = options.model_copy(update={"lora_merge_cache": str(scratch / "lora")})
        started = time.perf_counter()
        kept = False
        try:
            summary, merged = self._evaluate(job, scratch, options)
            kept = merged is not None and self.keep
        except Exception as error:  # a point's merge or evaluation; Ctrl-C still ends the run
            return Outcome(job, error=describe_error(error), seconds=_since(started))
        finally:
            if not kept:
                shutil.rmtree(scratch, ignore_errors=True)
        return Outcome(job, summary, merged=merged if kept else None, seconds=_since(started))

    def _evaluate(self, job: Job, scratch: Path, options: Any) -> tuple[dict, Path | None]:
        if job.kind == "reference":
            through_peft = isinstance(self.how, OnDisk) and self.how.adapter
            path = job.name if through_peft else evaluable(job.name, options)
            self.status(f"evaluating {job.role}")
            return dict(self.evaluator(path)), None
        assert job.recipe is not None
        if isinstance(self.how, InMemory):
            from mergekit_safety.tuning.resident import evaluate_trial

            self.status(f"evaluating {job.role}")
            trial = evaluate_trial(
                self.resident, self.evaluator, job.recipe, job.name, settle=job.settle
            )
            return trial, None
        where = scratch / self.name  # the evaluator shows the directory's name
        self.status(f"merging {job.role}")
        self.how.merger()(job.recipe, where, options)
        self.status(f"evaluating {job.role}")
        return dict(self.evaluator(str(where))), where

    def _load(self, recipe: Any) -> None:
        """The resident model: a failure here (a recipe it cannot hold) ends the run."""
        from mergekit_safety.tuning.resident import ResidentMerge

        assert isinstance(self.how, InMemory)
        backend = getattr(self.evaluator, "backend", "transformers")
        self.resident = ResidentMerge(recipe, self.options, device=self.how.device,
                                      dtype=self.how.dtype, backend=backend)  # fmt: skip

    def close(self) -> None:
        if self.resident is not None:
            self.resident.close()
            self.resident = None


def _since(started: float) -> float:
    return time.perf_counter() - started


@dataclass
class SerialRunner:
    """Every job in this process, one after another, on one :class:`Worker`.

    Everything it writes lives in one temporary directory (under ``work_dir``, default
    ``$TMPDIR``), removed however the run ends.
    """

    merge_options: Any
    how: How = field(default_factory=OnDisk)
    work_dir: Path | str | None = None

    @contextlib.contextmanager
    def open(self, template: Mapping[str, Any], evaluator: Evaluator, name: str,
             status: Any = None) -> Iterator[_SerialRun]:  # fmt: skip
        from mergekit_safety.recipe.lora_cache import lora_cache
        from mergekit_safety.tuning.merging import references

        with (
            tempfile.TemporaryDirectory(prefix=PREFIX, dir=self.work_dir) as tmp,
            lora_cache(references(template), self.merge_options.lora_merge_cache, tmp) as cache,
        ):
            options = self.merge_options.model_copy(update={"lora_merge_cache": cache})
            worker = Worker(self.how, evaluator, options, Path(tmp), name, keep=True,
                            status=status)  # fmt: skip
            try:
                yield _SerialRun(worker)
            finally:
                worker.close()


@dataclass
class _SerialRun:
    worker: Worker

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        for job in jobs:
            yield self.worker(job)

    def discard(self, outcome: Outcome) -> None:
        if outcome.merged is not None:
            shutil.rmtree(outcome.merged.parent)

    def write(self, recipe: Mapping[str, Any], out: Path) -> None:
        worker = self.worker
        where = worker.root / "chosen" / worker.name
        worker.how.merger()(recipe, where, worker.options)
        install(where, out)


@dataclass
class RayRunner:
    """Each job on a Ray cluster (see the module docstring).

    ``address``: ``local`` starts a cluster of ``workers`` CPUs (default: all) for this run; any
    other value is passed to ``ray.init`` (``auto``, ``ray://host:10001``). ``gpus``: each task's
    or actor's GPUs; ``actors``: how many resident models with :class:`InMemory`. The evaluator is
    pickled to the workers (a dataclass copied first, so nothing it loaded travels): give one
    without progress bars or a resident model.
    """

    merge_options: Any
    how: How = field(default_factory=OnDisk)
    work_dir: Path | str | None = None
    address: str = "local"
    workers: int | None = None
    gpus: float = 0
    actors: int = 1

    @contextlib.contextmanager
    def open(self, template: Mapping[str, Any], evaluator: Evaluator, name: str,
             status: Any = None) -> Iterator[_RayRun]:  # fmt: skip
        from mergekit_safety.tuning.ray_cluster import cancel_tasks, import_ray, start_ray

        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            start_ray(ray, self.address, self.workers)
        if dataclasses.is_dataclass(evaluator):
            evaluator = dataclasses.replace(evaluator)  # type: ignore[type-var]
        try:
            with tempfile.TemporaryDirectory(prefix=PREFIX, dir=self.work_dir) as tmp:
                run = _RayRun(ray, self, Path(tmp), name, evaluator)
                try:
                    yield run
                except BaseException:  # Ctrl-C, SIGTERM's SystemExit, a failed reference
                    if not run.actors:  # a task unwinds and removes its merge; an actor is killed
                        cancel_tasks(ray, run.pending)
                    raise
                finally:
                    run.close()
        finally:
            if started:
                ray.shutdown()


@dataclass
class _RayRun:
    ray: Any
    runner: RayRunner
    root: Path
    name: str
    evaluator: Evaluator
    actors: list[Any] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)

    def submit(self, jobs: Sequence[Job]) -> dict[Any, Job]:
        runner = self.runner
        options = runner.merge_options
        if isinstance(runner.how, OnDisk):
            task = self.ray.remote(num_cpus=1, num_gpus=runner.gpus, max_retries=0)(_task)
            return {task.remote(runner.how, self.evaluator, options, str(self.root), self.name,
                                job): job for job in jobs}  # fmt: skip
        if not self.actors:
            actor = self.ray.remote(num_cpus=1, num_gpus=runner.gpus, max_restarts=0)(_Actor)
            self.actors = [actor.remote(runner.how, self.evaluator, options, str(self.root),
                                        self.name) for _ in range(runner.actors)]  # fmt: skip
        return {self.actors[i % len(self.actors)].run.remote(job): job
                for i, job in enumerate(jobs)}  # fmt: skip

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        from mergekit_safety.tuning.ray_cluster import task_error

        refs = self.submit(jobs)
        self.pending = list(refs)
        while self.pending:
            done, self.pending = self.ray.wait(self.pending, num_returns=1)
            for ref in done:
                try:
                    outcome = self.ray.get(ref)
                except self.ray.exceptions.RayError as error:
                    outcome = Outcome(refs[ref], error=task_error(error))
                yield outcome

    def discard(self, outcome: Outcome) -> None:
        """Nothing to do: each worker removed its own merge."""

    def write(self, recipe: Mapping[str, Any], out: Path) -> None:
        where = self.root / "chosen" / self.name
        options = self.runner.merge_options
        cache = options.lora_merge_cache or str(self.root / "lora")  # in the run's directory
        self.runner.how.merger()(recipe, where, options.model_copy(update={"lora_merge_cache":
                                                                           cache}))  # fmt: skip
        install(where, out)

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.get(actor.close.remote(), timeout=30)
                self.ray.kill(actor)
        self.actors = []


def _task(how: How, evaluator: Evaluator, options: Any, root: str, name: str, job: Job) -> Outcome:
    """One job as a Ray task: everything it writes goes when it returns."""
    return Worker(how, evaluator, options, Path(root), name, keep=False)(job)


class _Actor:
    """A :class:`Worker` as a Ray actor, with a directory of its own for merged LoRA inputs."""

    def __init__(self, how: How, evaluator: Evaluator, options: Any, root: str, name: str):
        Path(root).mkdir(parents=True, exist_ok=True)
        self.scratch = tempfile.mkdtemp(prefix="actor-", dir=root)
        if options.lora_merge_cache is None:
            options = options.model_copy(update={"lora_merge_cache": self.scratch})
        self.worker = Worker(how, evaluator, options, Path(self.scratch), name, keep=False)

    def run(self, job: Job) -> Outcome:
        return self.worker(job)

    def close(self) -> None:
        self.worker.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
