"""A sweep's points as Ray tasks: every point merged and evaluated on its own worker.

The merge is the cheap part of a point; loading and evaluating the merge dominate, and they are
independent from point to point. Each point (and each reference model) is one Ray task holding one
CPU, or one GPU with ``--cuda``: it merges into a temporary directory of its own, evaluates, removes
the merge and returns the summary. The driver keeps the plan's order, so the rows, the choice and
the reports are those of the serial :func:`~.run.run_sweep`; the chosen point is
merged once more on the driver for ``out`` (merges are deterministic, and the worker that evaluated
it may sit on another node). A point that fails is reported with its parameters and the others go
on; Ctrl-C (or SIGTERM) cancels every task and removes what they wrote.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mergekit_safety.errors import ConfigError
from mergekit_safety.gate import OBJECTIVE
from mergekit_safety.sweep.grid import SweepPlan
from mergekit_safety.sweep.run import (
    Evaluator,
    SweepPoint,
    SweepResult,
    evaluable,
    install,
    merge_adapter,
    merge_recipe,
    select,
)

LOCAL = "local"
"""``--ray`` without an address: start a cluster on this machine for the run, stop it after."""

CANCEL_GRACE_S = 10.0
"""After a polite cancel (tasks unwind and remove their merges), how long before killing them."""


def run_sweep_ray(
    plan: SweepPlan,
    evaluate_model: Evaluator,
    *,
    merge_options: Any,
    min_refusal: float | None = None,
    max_over_refusal: float | None = None,
    out: Path | None = None,
    work_dir: Path | None = None,
    progress: bool = True,
    merge: Callable[[Mapping[str, Any], Path, Any], None] = merge_recipe,
    adapter: bool = False,
    address: str = LOCAL,
    workers: int | None = None,
    gpus_per_point: float = 0,
    objective: str = OBJECTIVE,
) -> SweepResult:
    """:func:`run_sweep` with every reference and point a Ray task (see the module docstring).

    ``address``: ``local`` starts a cluster of ``workers`` CPUs (default: all) for this run; any
    other value is passed to ``ray.init`` (``auto``, ``ray://host:10001``). ``evaluate_model`` is
    pickled to the workers: give one without progress bars or a resident model.
    """
    ray = _import_ray()
    if adapter:
        merge = merge_adapter
    started = not ray.is_initialized()
    if started:
        _start(ray, address, workers)
    try:
        with tempfile.TemporaryDirectory(prefix="mergekit-safety-sweep-", dir=work_dir) as tmp:
            return _run(
                ray,
                plan,
                evaluate_model,
                merge_options=merge_options,
                min_refusal=min_refusal,
                max_over_refusal=max_over_refusal,
                out=out,
                root=Path(tmp),
                progress=progress,
                merge=merge,
                adapter=adapter,
                gpus=gpus_per_point,
                objective=objective,
            )
    finally:
        if started:
            ray.shutdown()


def _run(
    ray: Any,
    plan: SweepPlan,
    evaluate_model: Evaluator,
    *,
    merge_options: Any,
    min_refusal: float | None,
    max_over_refusal: float | None,
    out: Path | None,
    root: Path,
    progress: bool,
    merge: Callable[[Mapping[str, Any], Path, Any], None],
    adapter: bool,
    gpus: float,
    objective: str,
) -> SweepResult:
    from tqdm.auto import tqdm

    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_task)
    name = out.resolve().name if out is not None else "merge"  # mergekit titles the card so
    references = [plan.aligned, *plan.finetuned]
    jobs: dict[Any, tuple[str, int]] = {}
    for index, reference in enumerate(references):
        ref = task.remote(str(root), "reference", reference, adapter, merge, merge_options,
                          evaluate_model, name)  # fmt: skip
        jobs[ref] = ("reference", index)
    for index, value in enumerate(plan.values):
        ref = task.remote(str(root), "point", plan.recipe_with(value), adapter, merge,
                          merge_options, evaluate_model, name)  # fmt: skip
        jobs[ref] = ("point", index)
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    failures: dict[int, str] = {}
    pending = list(jobs)
    with tqdm(total=len(jobs), desc=f"sweep {plan.parameter} (ray)", unit="model",
              disable=not progress) as steps:  # fmt: skip
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    kind, index = jobs[ref]
                    try:
                        summary = ray.get(ref)
                    except ray.exceptions.RayError as error:
                        if kind == "reference":
                            raise ConfigError(
                                f"evaluating {references[index]} failed: {_cause(error)}"
                            ) from None
                        failures[index] = _cause(error)
                    else:
                        label = plan.label(plan.values[index]) if kind == "point" else None
                        summaries[(kind, index)] = {
                            **summary,
                            "model": references[index] if kind == "reference" else label,
                        }
                    steps.update()
        except BaseException:  # Ctrl-C, SIGTERM's SystemExit, a failed reference
            _cancel(ray, pending)
            raise
    result = SweepResult(
        plan=plan,
        min_refusal=min_refusal,
        max_over_refusal=max_over_refusal,
        aligned=summaries[("reference", 0)],
        finetuned=[summaries[("reference", i)] for i in range(1, len(references))],
        objective=objective,
    )
    for index, value in enumerate(plan.values):
        if index in failures:
            result.failed.append((value, failures[index]))
        else:
            result.points.append(SweepPoint(value, summaries[("point", index)]))
    result.chosen = select(result.points, min_refusal, max_over_refusal, plan.parameters, objective)
    if out is not None and result.chosen is not None:
        where = root / "chosen" / name
        cache = merge_options.lora_merge_cache or str(root / "lora")  # in the run's directory
        options = merge_options.model_copy(update={"lora_merge_cache": cache})
        merge(plan.recipe_with(result.chosen.value), where, options)
        install(where, out)
        result.out = out
    return result


def _task(
    root: str,
    kind: str,
    what: Any,
    adapter: bool,
    merge: Callable[[Mapping[str, Any], Path, Any], None],
    merge_options: Any,
    evaluate_model: Evaluator,
    name: str,
) -> dict[str, Any]:
    """One model on a worker: a reference (its LoRA merged first, as the serial run does) or a
    point (merged with ``what``, the recipe). Everything it writes goes when it returns."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)  # on another node: the same path, its own disk
    scratch = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=base))
    options = merge_options.model_copy(
        update={"lora_merge_cache": merge_options.lora_merge_cache or str(scratch / "lora")}
    )
    try:
        if kind == "reference":
            path = what if adapter else evaluable(what, options)
        else:
            path = str(scratch / name)
            merge(what, Path(path), options)
        return dict(evaluate_model(path))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _start(ray: Any, address: str, workers: int | None) -> None:
    """Start or join the cluster. Ray's core replaces the process's SIGTERM handler with one that
    exits on the spot; the one before it (the CLI's: unwind, so temporary merges are removed)
    is put back."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if address == LOCAL:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(f"--ray {address}: cannot join the Ray cluster: {error}") from None
    if handler is not None:
        signal.signal(signal.SIGTERM, handler)


def _cancel(ray: Any, pending: list[Any]) -> None:
    """Ask every unfinished task to stop (it unwinds and removes its merge); kill the rest."""
    for ref in pending:
        ray.cancel(ref, force=False)
    _, stuck = ray.wait(pending, num_returns=len(pending), timeout=CANCEL_GRACE_S)
    for ref in stuck:
        ray.cancel(ref, force=True)


def _cause(error: BaseException) -> str:
    """The task's own exception, one line: Ray wraps it with the remote traceback."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray needs Ray: pip install 'mergekit-safety[ray]' (or pip install ray)"
        ) from None
    return ray
