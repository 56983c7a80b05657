"""Where a search's trials run: here (:class:`SerialRunner`), or on Ray actors (:class:`RayRunner`)
that each hold a resident network of their own. Both return a batch's outcomes in trial order."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mergekit_safety.search.resident import ResidentMerge, evaluate_trial
from mergekit_safety.sweep.executor import describe_error

Jobs = Sequence[tuple[str, Mapping[str, Any]]]


class TrialWorker:
    """A resident network and an evaluator: merges and evaluates one trial at a time.

    Without ``options.lora_merge_cache``, ``base+adapter`` inputs are merged into a temporary
    directory of its own, removed by :meth:`close`.
    """

    def __init__(self, recipe: Mapping[str, Any], options: Any, evaluator: Any, *,
                 device: str, dtype: str | None) -> None:  # fmt: skip
        self._scratch = None
        backend = getattr(evaluator, "backend", "transformers")
        if options.lora_merge_cache is None:
            self._scratch = tempfile.mkdtemp(prefix="mergekit-safety-search-lora-")
            options = options.model_copy(update={"lora_merge_cache": self._scratch})
        self.evaluator = evaluator
        self.resident = ResidentMerge(recipe, options, device=device, dtype=dtype, backend=backend)

    def run(self, name: str, recipe: Mapping[str, Any], settle: Any = None) -> dict[str, Any] | str:
        """The trial's summary, or its error as one line (the search goes on)."""
        try:
            return evaluate_trial(self.resident, self.evaluator, recipe, name, settle=settle)
        except Exception as error:  # a trial's merge or evaluation; Ctrl-C still stops the run
            return describe_error(error)

    def close(self) -> None:
        self.resident.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


class SerialRunner:
    """Every trial in this process, on one resident network."""

    def __init__(self, worker: TrialWorker) -> None:
        self.worker = worker

    def run(self, jobs: Jobs, settle: Any = None) -> list[dict[str, Any] | str]:
        return [self.worker.run(name, recipe, settle) for name, recipe in jobs]


class RayRunner:
    """A batch's trials spread over ``actors`` Ray actors, one resident network each."""

    def __init__(self, ray: Any, actors: list[Any]) -> None:
        self.ray = ray
        self.actors = actors

    def run(self, jobs: Jobs, settle: Any = None) -> list[dict[str, Any] | str]:
        from mergekit_safety.sweep.distributed import cancel_tasks, task_error

        refs = [
            self.actors[i % len(self.actors)].run.remote(name, dict(recipe), settle)
            for i, (name, recipe) in enumerate(jobs)
        ]
        out: list[dict[str, Any] | str] = []
        try:
            for ref in refs:
                try:
                    out.append(self.ray.get(ref))
                except self.ray.exceptions.RayError as error:
                    out.append(task_error(error))
        except BaseException:
            cancel_tasks(self.ray, refs[len(out) :])
            raise
        return out


@contextlib.contextmanager
def serial_runner(recipe: Mapping[str, Any], options: Any, evaluator: Any, *, device: str,
                  dtype: str | None) -> Iterator[SerialRunner]:  # fmt: skip
    worker = TrialWorker(recipe, options, evaluator, device=device, dtype=dtype)
    try:
        yield SerialRunner(worker)
    finally:
        worker.close()


@contextlib.contextmanager
def ray_runner(
    recipe: Mapping[str, Any], options: Any, evaluator: Any, *, device: str, dtype: str | None,
    actors: int, address: str, workers: int | None, gpus: float,
) -> Iterator[RayRunner]:  # fmt: skip
    """``actors`` Ray actors (one CPU each, ``gpus`` GPUs each) on a local or joined cluster."""
    from mergekit_safety.sweep.distributed import import_ray, start_ray

    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        start_ray(ray, address, workers)
    try:
        worker = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(_RayWorker)
        held = [worker.remote(dict(recipe), options, evaluator, device, dtype)
                for _ in range(actors)]  # fmt: skip
        try:
            yield RayRunner(ray, held)
        finally:
            for actor in held:
                with contextlib.suppress(Exception):
                    ray.get(actor.close.remote(), timeout=30)
                    ray.kill(actor)
    finally:
        if started:
            ray.shutdown()


class _RayWorker(TrialWorker):
    """:class:`TrialWorker` as a Ray actor (positional arguments for ``.remote``)."""

    def __init__(self, recipe: Mapping[str, Any], options: Any, evaluator: Any, device: str,
                 dtype: str | None) -> None:  # fmt: skip
        super().__init__(recipe, options, evaluator, device=device, dtype=dtype)
