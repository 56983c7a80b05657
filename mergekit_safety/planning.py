"""What the safety methods do while mergekit plans: checks that run once, and ``top_k``.

mergekit 0.1.5 gives a method no planning hook, but it calls the method's ``validate_inputs``
as it plans: once per module slice from ``MergePlanner.normalize_config`` (the planner is the
caller) and once per ``ExecuteMergeMethodTask`` it builds. From there the planner and the output
path are one look up the call stack away, so the checks below run before a tensor loads, once
per planned merge (recipe and output), not per tensor: roles given to ``base_model`` itself, an
output directory that already holds a model (:func:`guard_output`), and the bookkeeping that
notices an ``unaligned`` model equal to the aligned one.

**``top_k``/``fraction`` inside mergekit's own run: a first ρ pass while mergekit plans.**

Why here. mergekit 0.1.5 merges one tensor per task, so a kernel never sees the other matrices'
ρ. The one moment that sees the whole recipe and precedes every load is planning:
``MergePlanner.normalize_config`` calls the method's ``validate_inputs`` once per module slice,
with the planner (its config, architecture, options, output config) as the caller, before any
tensor task exists. There :func:`resolve_in_planner` scores the recipe with the same code
``inspect`` uses (its own planner over a copy of the config; lazy loads; nothing written),
turns the selection into τ (:mod:`mergekit_safety.selection`), and rewrites the planner's
top-level ``parameters`` to ``threshold: τ``. Every tensor task mergekit plans next carries
that τ, and the ordinary merge runs unchanged: multi-GPU and lazy loading included, and the
merged model's ``mergekit_config.yml`` is still the recipe as written.

Alternatives rejected: ranking at the first kernel call would need a second executor inside
mergekit's (and its device placement) with no recipe in reach, and could only fail after
loading; rewriting the frozen, hashed tasks is not possible. A planner that is not
``MergePlanner`` (``mergekit-pytorch``) never reaches this hook; its tasks would carry
``top_k`` to the kernel, so the task-level hook refuses them before anything loads.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_safety.errors import ConfigError, on_failure
from mergekit_safety.selection import SELECTORS

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
    _WATCHES.clear()  # a new merge: what earlier ones in this process saw no longer counts
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


def watch_planned(key: tuple[Any, Any], tensor: str) -> None:
    """Record a tensor the planned merge of (aligned, unaligned) ``key`` will run."""
    _WATCHES.setdefault(key, _Watch()).planned.add(tensor)


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


# --- top_k / fraction ---------------------------------------------------------------------------


def resolve_in_planner(planner: Any, method: Any) -> None:
    """If the planner's recipe selects by rank, score it now and replace the selection by τ."""
    from mergekit_safety.inspection import (
        decide_at,
        score_config,
        selection_of,
        without_selection,
    )
    from mergekit_safety.selection import resolve

    config = planner.config
    selection = selection_of(config)
    if selection is None:
        return
    started = time.perf_counter()
    records = score_config(
        without_selection(config, drop_threshold=False),
        planner.options,
        arch_info=planner.arch_info,
        out_config=planner.out_model_config,
        require_unaligned=True,
        gated_only=True,
    )
    resolved = resolve(selection, {r["tensor"]: r["rho"] for r in records if r["gated"]})
    decide_at(records, resolved, method)  # checks τ against every ρ once more
    parameters = {k: v for k, v in (config.parameters or {}).items() if k not in SELECTORS}
    config.parameters = {**parameters, "threshold": resolved.threshold}
    if not planner.options.quiet:
        print(
            f"mergekit-safety: {resolved.summary()} "
            f"(rho pass {time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
        )


def refuse_unresolved(task: Any) -> None:
    """A task still carrying top_k/fraction was planned without ``MergePlanner``: stop now."""
    if any(task.parameters.get(key) is not None for key in SELECTORS):
        raise ConfigError(
            "top_k/fraction need the whole model ranked first, which mergekit-yaml, "
            "mergekit-multi, run_merge and the Python API do; for this command write the "
            "threshold out with `mergekit-safety inspect RECIPE --top-k K --write-recipe OUT.yml`"
        )
