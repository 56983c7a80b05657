"""The Ray executor: every reference and point of a sweep merged and evaluated on its own worker.

The merge is the cheap part of a point; loading and evaluating the merge dominate, and they are
independent from point to point. Each point (and each reference model) is one Ray task holding one
CPU, or one GPU with ``--cuda``: it merges into a temporary directory of its own, evaluates, removes
the merge and returns the summary. The sweep's loop (:func:`~.run.run_sweep`) is the serial one, so
the rows, the choice and the reports are the serial sweep's; the chosen point is merged once more
on the driver for ``out`` (merges are deterministic, and the worker that evaluated it may sit on
another node). A point that fails is reported with its parameters and the others go on; Ctrl-C (or
SIGTERM) cancels every task and removes what they wrote. Ray is imported when a sweep starts.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_safety.core.acceptance import NO_GATE, Gate
from mergekit_safety.core.errors import ConfigError, install_hint
from mergekit_safety.sweep.executor import Evaluator, Job, Outcome, describe_error
from mergekit_safety.sweep.grid import SweepPlan
from mergekit_safety.sweep.merging import Merge, evaluable, install, merge_adapter, merge_recipe
from mergekit_safety.sweep.result import SweepResult

LOCAL = "local"
"""``--ray`` without an address: start a cluster on this machine for the run, stop it after."""

CANCEL_GRACE_S = 10.0
"""After a polite cancel (tasks unwind and remove their merges), how long before killing them."""


@dataclass
class RayExecutor:
    """Each job a Ray task (see the module docstring).

    ``address``: ``local`` starts a cluster of ``workers`` CPUs (default: all) for this run; any
    other value is passed to ``ray.init`` (``auto``, ``ray://host:10001``). The evaluator is
    pickled to the workers: give one without progress bars or a resident model.
    """

    merge_options: Any
    work_dir: Path | None = None
    progress: bool = True
    merge: Merge | None = None
    adapter: bool = False
    address: str = LOCAL
    workers: int | None = None
    gpus_per_point: float = 0

    @contextlib.contextmanager
    def open(self, plan: SweepPlan, evaluator: Evaluator, name: str) -> Iterator[_RayRun]:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            start_ray(ray, self.address, self.workers)
        try:
            with tempfile.TemporaryDirectory(
                prefix="mergekit-safety-sweep-", dir=self.work_dir
            ) as tmp:
                merge = merge_adapter if self.adapter else (self.merge or merge_recipe)
                run = _RayRun(ray, self, plan, Path(tmp), name, merge, evaluator)
                try:
                    yield run
                except BaseException:  # Ctrl-C, SIGTERM's SystemExit, a failed reference
                    cancel_tasks(ray, run.pending)
                    raise
        finally:
            if started:
                ray.shutdown()


@dataclass
class _RayRun:
    ray: Any
    executor: RayExecutor
    plan: SweepPlan
    root: Path
    name: str
    merge: Merge
    evaluator: Evaluator
    pending: list[Any] = field(default_factory=list)

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        from tqdm.auto import tqdm

        executor = self.executor
        task = self.ray.remote(num_cpus=1, num_gpus=executor.gpus_per_point, max_retries=0)(_task)
        refs: dict[Any, Job] = {}
        for job in jobs:
            what = job.name if job.kind == "reference" else job.recipe
            ref = task.remote(str(self.root), job.kind, what, executor.adapter, self.merge,
                              executor.merge_options, self.evaluator, self.name)  # fmt: skip
            refs[ref] = job
        self.pending = list(refs)
        with tqdm(total=len(refs), desc=f"sweep {self.plan.parameter} (ray)", unit="model",
                  disable=not executor.progress) as steps:  # fmt: skip
            while self.pending:
                done, self.pending = self.ray.wait(self.pending, num_returns=1)
                for ref in done:
                    try:
                        summary = self.ray.get(ref)
                    except self.ray.exceptions.RayError as error:
                        outcome = Outcome(refs[ref], error=task_error(error))
                    else:
                        outcome = Outcome(refs[ref], summary)
                    steps.update()
                    yield outcome

    def discard(self, outcome: Outcome) -> None:
        """Nothing to do: each task removed its own merge."""

    def write(self, recipe: Mapping[str, Any], out: Path) -> None:
        where = self.root / "chosen" / self.name
        options = self.executor.merge_options
        cache = options.lora_merge_cache or str(self.root / "lora")  # in the run's directory
        self.merge(recipe, where, options.model_copy(update={"lora_merge_cache": cache}))
        install(where, out)


def run_sweep_ray(
    plan: SweepPlan,
    evaluate_model: Evaluator,
    *,
    merge_options: Any,
    gate: Gate = NO_GATE,
    out: Path | None = None,
    work_dir: Path | None = None,
    progress: bool = True,
    merge: Merge = merge_recipe,
    adapter: bool = False,
    address: str = LOCAL,
    workers: int | None = None,
    gpus_per_point: float = 0,
) -> SweepResult:
    """:func:`~.run.run_sweep` on a :class:`RayExecutor` built from these arguments."""
    from mergekit_safety.sweep.run import run_sweep

    executor = RayExecutor(merge_options, work_dir, progress, merge, adapter, address, workers,
                           gpus_per_point)  # fmt: skip
    return run_sweep(plan, evaluate_model, executor, gate=gate, out=out)


def _task(
    root: str,
    kind: str,
    what: Any,
    adapter: bool,
    merge: Merge,
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


def start_ray(ray: Any, address: str, workers: int | None) -> None:
    """Start or join the cluster. Ray's core replaces the process's SIGTERM handler with one that
    exits on the spot; the one before it (the CLI's: unwind, so temporary merges are removed)
    is put back."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    notice = logging.getLogger(TOKEN_NOTICE_LOGGER)
    quiet = _DropTokenNotice()
    notice.addFilter(quiet)  # every run's own cluster: a notice on every run buries the result
    try:
        if address == LOCAL:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(f"--ray {address}: cannot join the Ray cluster: {error}") from None
    finally:
        notice.removeFilter(quiet)
    if handler is not None:
        signal.signal(signal.SIGTERM, handler)


TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
"""Where Ray says "Token authentication is enabled for this Ray cluster" as it starts one."""


class _DropTokenNotice:
    """A logging filter: drop Ray's notice that the cluster it starts uses token authentication
    (its default, nothing to act on), keep every other record (a disabled-auth warning too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for")


def cancel_tasks(ray: Any, pending: list[Any]) -> None:
    """Ask every unfinished task to stop (it unwinds and removes its merge); kill the rest."""
    if not pending:
        return
    for ref in pending:
        ray.cancel(ref, force=False)
    _, stuck = ray.wait(pending, num_returns=len(pending), timeout=CANCEL_GRACE_S)
    for ref in stuck:
        ray.cancel(ref, force=True)


def task_error(error: BaseException) -> str:
    """The task's own exception, one line: Ray wraps it with the remote traceback."""
    return describe_error(getattr(error, "cause", None) or error)


RAY_MISSING = f"--ray needs Ray: {install_hint('ray', 'ray[client]')}"
RAY_CLIENT_MISSING = (
    f"--ray ray://...: a ray:// address needs Ray's client (grpcio): "
    f"{install_hint('ray', 'ray[client]')}"
)


def check_ray_installed(address: str) -> None:
    """Ray (and, for a ``ray://`` address, its client) is installed: found without importing
    it, so a missing extra is one line before any model is evaluated."""
    from importlib.util import find_spec

    if find_spec("ray") is None:
        raise ConfigError(RAY_MISSING)
    if address.startswith("ray://") and find_spec("grpc") is None:
        raise ConfigError(RAY_CLIENT_MISSING)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray
