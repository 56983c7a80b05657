"""What the safety methods see of mergekit's planning, and the checks that run there once.

mergekit 0.1.5 gives a method no planning hook, but it validates every ``ExecuteMergeMethodTask``
as it plans, and that validation calls the method's ``validate_inputs``. From there the task
being planned, the ``MergePlanner`` and the output path are one look up the call stack away, so
the checks below run before a tensor loads: once per planned merge (recipe and output), not per
tensor.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_safety.errors import ConfigError, on_failure

OVERWRITE_ENV = "MERGEKIT_SAFETY_OVERWRITE"
MODEL_FILES = (
    "config.json",
    "*.safetensors",
    "*.bin",
    "*.safetensors.index.json",
    "*.bin.index.json",
    "adapter_config.json",
)
"""Files that make a directory load as a model: an output holding any of them is not reused
silently, and on overwrite they all go first, so no stale shard or index survives."""

_CHECKED: set[tuple[int, str]] = set()


def task_being_planned() -> Any:
    """The mergekit ``ExecuteMergeMethodTask`` whose validator called ``validate_inputs``."""
    adapter = sys.modules.get("mergekit.merge_methods.task_adapter")
    if adapter is None:  # not imported: no task is planning (and the API skips its import cost)
        return None
    caller = sys._getframe(2).f_locals.get("self")  # validate_configured_inputs(self)
    return caller if isinstance(caller, adapter.ExecuteMergeMethodTask) else None


@dataclass(frozen=True)
class PlanningContext:
    """The planner running now and the directory it plans to write (None: not to disk)."""

    planner: Any
    out_path: str | None


def planning_context() -> PlanningContext | None:
    """Find the ``MergePlanner`` (and ``plan_to_disk``'s ``out_path``) up the call stack."""
    plan = sys.modules.get("mergekit.plan")
    if plan is None:
        return None
    frame, planner, out_path = sys._getframe(1), None, None
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, plan.MergePlanner):
            planner = owner
            if frame.f_code.co_name == "plan_to_disk":
                out_path = frame.f_locals.get("out_path")
        frame = frame.f_back
    return None if planner is None else PlanningContext(planner, out_path)


def check_plan(context: PlanningContext, method: str) -> bool:
    """The once-per-merge checks: roles given to base_model itself, and the output directory.

    Returns whether this is the first call for this planner and output (a new merge).
    """
    key = (id(context.planner), str(context.out_path))
    if key in _CHECKED:
        return False
    _CHECKED.add(key)
    config = context.planner.config
    base = config.base_model
    for model, parameters in _model_definitions(config):
        role = str((parameters or {}).get("role", "")).strip().lower()
        if role and role != "finetuned" and base is not None and model == base:
            raise ConfigError(
                f"{method}: the {role} model is base_model itself ({base}); "
                + (
                    "V = aligned − unaligned would be 0 and the gate could not work: give the "
                    "model alignment started from"
                    if role == "unaligned"
                    else "give the safety fine-tune"
                )
            )
    if context.out_path is not None and context.out_path != os.devnull:
        guard_output(Path(context.out_path))
    return True


def _model_definitions(config: Any) -> Iterator[tuple[Any, dict | None]]:
    """(model, parameters) of every input in the recipe, in any of mergekit's three layouts."""
    for entry in config.models or ():
        yield entry.model, entry.parameters
    slices = list(config.slices or ())
    for module in (config.modules or {}).values():
        yield from ((entry.model, entry.parameters) for entry in module.models or ())
        slices += module.slices or ()
    for output_slice in slices:
        yield from ((source.model, source.parameters) for source in output_slice.sources)


def model_files(directory: Path) -> list[Path]:
    """The files in ``directory`` that make it load as a model (see ``MODEL_FILES``)."""
    if not directory.is_dir():
        return []
    return sorted({path for pattern in MODEL_FILES for path in directory.glob(pattern)})


def overwrite_allowed() -> bool:
    return os.environ.get(OVERWRITE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def guard_output(out: Path) -> None:
    """Refuse to write over a model unless asked; a failed run then removes what it added.

    mergekit has no ``--overwrite``: it writes into the directory and leaves an old model's other
    shards and index beside the new ones. With ``MERGEKIT_SAFETY_OVERWRITE=1`` the old model's
    files go before anything is written; config.json is written last by mergekit, so a run cut
    short leaves no directory that loads as a model.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory")
    existing = model_files(out)
    if existing:
        if not overwrite_allowed():
            names = ", ".join(path.name for path in existing[:3])
            raise ConfigError(
                f"output {out} already holds a model ({names}); choose a new directory or set "
                f"{OVERWRITE_ENV}=1 to replace it"
            )
        for path in existing:
            path.unlink()
    created = not out.exists()
    before = set() if created else {path.name for path in out.iterdir()}

    def remove_what_the_run_added() -> None:
        if (out / "config.json").exists():  # mergekit writes it last: that run finished
            return
        if created:
            shutil.rmtree(out, ignore_errors=True)
            return
        for path in out.iterdir() if out.is_dir() else ():
            if path.name not in before:
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    on_failure(remove_what_the_run_added)


# --- an unaligned model that equals the aligned one --------------------------------------------


@dataclass
class _Watch:
    planned: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    gated: int = 0
    empty: int = 0


_WATCHES: dict[tuple[Any, Any], _Watch] = {}


def watch_planned(key: tuple[Any, Any], tensor: str, *, new_merge: bool) -> None:
    """Record a tensor the planned merge of (aligned, unaligned) ``key`` will run."""
    if new_merge or key not in _WATCHES:
        _WATCHES[key] = _Watch()
    _WATCHES[key].planned.add(tensor)


def alignment_vanished(key: tuple[Any, Any], results: dict[str, bool | None]) -> bool:
    """Whether V = 0 in every gated matrix of the merge: the gate then has nothing to measure.

    ``results``: tensor name -> V == 0 (None: not gated). A planned merge answers once its last
    tensor ran; a call not planned by mergekit (the Python API) answers from the tensors given,
    when there are several: for one matrix, V = 0 is the documented keep-θ_ft case.
    """
    watch = _WATCHES.get(key)
    if watch is None:
        gated = [zero for zero in results.values() if zero is not None]
        return len(gated) > 1 and all(gated)
    for tensor, zero in results.items():
        if tensor in watch.done:
            continue
        watch.done.add(tensor)
        watch.gated += zero is not None
        watch.empty += bool(zero)
    return watch.done >= watch.planned and watch.gated > 0 and watch.empty == watch.gated
