"""What the safety methods need while mergekit plans and runs a merge: checks, ``top_k``, a report.

mergekit's planner calls :func:`on_recipe` once per planned merge (after the recipe is normalised,
before any tensor task exists), :func:`on_tensor` for every output tensor it plans, and
:func:`on_written` once the merge's tensors are all written — through the wrappers that
:mod:`mergekit_safety.mergekit_internals` installs (:func:`install`). So the checks below run
before a tensor loads, once per merge, not per tensor: roles given to ``base_model`` itself, an
output directory that already holds a model (:func:`guard_output`), ``--cuda`` without a GPU, the
bookkeeping that notices an ``unaligned`` model equal to the aligned one, and per tensor the
roles and parameter domains.

**``top_k``/``fraction`` inside mergekit's own run: a ρ pass over the plan, before it runs.**

Why here. mergekit 0.1.5 merges one tensor per task, so a kernel never sees the other matrices'
ρ. The one moment that sees every planned tensor and precedes every load is the end of planning.
:func:`on_recipe` notes the selection in the merge's run; once the planner has planned every
tensor, :func:`on_planned` scores those very tasks with the code ``inspect`` uses
(:mod:`mergekit_safety.recipe.scoring`: lazy loads, nothing written), turns the selection into τ
(:mod:`mergekit_safety.core.selection`) and keeps τ in the run, where the kernels read it in place
of ``top_k``. One plan per merge: multi-GPU and lazy loading included, and the merged model's
``mergekit_config.yml`` is still the recipe as written.

Alternatives rejected: ranking at the first kernel call would need a second executor inside
mergekit's (and its device placement) and could only fail after loading; rewriting the frozen,
hashed tasks is not possible; a second, throwaway plan (this module's first design) repeated
every recipe and tensor check. A planner that is not ``MergePlanner`` (``mergekit-pytorch``)
never calls :func:`on_recipe`; its tasks would carry ``top_k`` to the kernel, so
:func:`on_tensor` refuses them before anything loads.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergekit_safety import mergekit_internals
from mergekit_safety.core import runs
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.outputs import check_writable
from mergekit_safety.core.parameters import check_domains
from mergekit_safety.core.roles import Role
from mergekit_safety.core.selection import SELECTORS
from mergekit_safety.mergekit_internals import (
    AfterImport,
    PlannedRecipe,
    PlannedTensor,
    WrittenMerge,
)
from mergekit_safety.methods.alignment_check import watch_planned
from mergekit_safety.methods.base import RoleCheckedMethod, missing_calibration
from mergekit_safety.recipe.keys import check_filters, check_recipe_keys, ours
from mergekit_safety.recipe.preflight import check_same_architecture
from mergekit_safety.recipe.walk import inputs, resolve_selection, role_of

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

MERGEKIT_OUTPUTS = (
    "mergekit_config.yml",
    "README.md",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
"""What mergekit writes beside the weights: on overwrite these go too, so no old card or
tokenizer file outlives the model it described."""


def install(after_import: AfterImport) -> None:
    """Have mergekit's planner call this module for every merge (wrapped once per process)."""
    hooks = mergekit_internals.Hooks(
        on_config=on_config,
        on_recipe=on_recipe,
        on_tensor=on_tensor,
        on_planned=on_planned,
        on_written=on_written,
    )
    mergekit_internals.install(hooks, after_import)


def on_config(raw: Mapping[str, Any], config: Any) -> None:
    """A recipe of ours as read: its keys, and its recipe-wide numbers' domains, before warm-up."""
    method = ours(config.merge_method)
    if method is None:
        return
    check_recipe_keys(raw)
    scalars = {
        key: value
        for key, value in (config.parameters or {}).items()
        if not isinstance(value, (list, dict))  # gradients and filters resolve per tensor
    }
    check_domains(method.spec.parameters, scalars)  # the cross-parameter rules: per tensor
    check_dtypes(config)
    check_adapters(config)


def check_adapters(config: Any) -> None:
    """Every local ``model+adapter`` input's LoRA fits its model (shapes, rank, finite values),
    from the adapter's and the model's files, before mergekit merges it (warm-up)."""
    from mergekit.common import ModelReference

    from mergekit_safety.adapter.source import check_fits

    for reference in config.referenced_models():
        if reference.lora is None or not Path(reference.model.path).expanduser().is_dir():
            continue
        model = ModelReference(model=reference.model)
        check_fits(reference.lora.path, mergekit_internals.tensor_shapes(model), model)


def check_dtypes(config: Any) -> None:
    """``dtype`` and ``out_dtype`` name a dtype mergekit knows (it would find out mid-merge)."""
    from mergekit.common import dtype_from_name

    for key in ("dtype", "out_dtype"):
        value = getattr(config, key, None)
        if value is None:
            continue
        try:
            dtype_from_name(value)
        except RuntimeError:
            raise ConfigError(
                f"{key}: unknown dtype {value!r} (use float32, float16 or bfloat16)"
            ) from None


def on_recipe(recipe: PlannedRecipe) -> None:
    """The once-per-merge checks, then the ``top_k`` ρ pass; before any tensor task exists."""
    method = ours(recipe.config.merge_method)
    if method is None:
        return
    check_device(recipe.options)
    check_roles_on_base(recipe.config, method.spec.name)
    check_alignment_present(recipe.config, method.spec.name)
    if recipe.config.base_model is not None:
        base = recipe.config.base_model
        shapes = mergekit_internals.tensor_shapes(base)
        if method.check_recipe is not None:  # the method's own checks (LoX: its rank k)
            method.check_recipe(recipe.config, shapes)
        check_filters(recipe.config, shapes, base)
    if "calibration" in {p.name for p in method.spec.parameters}:
        check_calibration(recipe.config, method)
    run = runs.current()
    if recipe.out_path is not None and run is not None and run.out_path == recipe.out_path:
        guard_output(Path(recipe.out_path), run)
        run.recipe = recipe
    expect_selection(recipe)


def check_calibration(config: Any, method: RoleCheckedMethod) -> None:
    """Calibration statistics: given (if the method needs them), readable, of base_model's layers,
    taken on base_model, and every file as its header and values should be (one line if not)."""
    from mergekit_safety.core.calibration import check_against, check_files, read

    where = (config.parameters or {}).get("calibration")
    if where is None:
        if method.needs_calibration:
            raise ConfigError(missing_calibration(method.spec.name))
        return
    calibration = read(where)
    if config.base_model is not None:
        shapes = mergekit_internals.tensor_shapes(config.base_model)
        check_against(calibration, shapes)
        check_calibrated_on(config, calibration)
    check_files(calibration)


def check_calibrated_on(config: Any, calibration: Any) -> None:
    """The statistics were taken on base_model (the aligned model), as ``calibration.json`` says.

    Refused when the recorded model is another input of the recipe (the unaligned model, the
    fine-tune), or a local model whose matrices differ from base_model's; a recorded path that
    names nothing here (another machine, a Hub id) cannot be compared and passes.
    """
    from mergekit.common import ModelReference

    recorded = calibration.info.get("model")
    base = config.base_model
    if not isinstance(recorded, str) or not recorded or base.lora is not None:
        return
    if _same_path(recorded, base.model.path):
        return
    method = config.merge_method
    advice = (
        f"{method} needs the statistics of the aligned model (base_model): "
        f"`mergekit-safety calibrate {base} --prompts FILE --out DIR`"
    )
    for scope in inputs(config):
        if scope.reference != base and _same_path(recorded, scope.reference.model.path):
            raise ConfigError(
                f"calibration {calibration.directory} was taken on {recorded}, the "
                f"{role_of(scope)} model of this recipe, not on base_model {base}; {advice}"
            )
    if (
        Path(recorded).expanduser().is_dir()
        and mergekit_internals.same_matrices(base, ModelReference.parse(recorded)) is False
    ):
        raise ConfigError(
            f"calibration {calibration.directory} was taken on {recorded}, whose weights differ "
            f"from base_model {base}; {advice}"
        )


def _same_path(first: str, second: str) -> bool:
    """Two model paths name one directory (or, where neither is local, the same Hub id)."""
    a, b = Path(first).expanduser(), Path(second).expanduser()
    if a.exists() and b.exists():
        return a.resolve() == b.resolve()
    return first.strip().rstrip("/") == second.strip().rstrip("/")


def check_device(options: Any) -> None:
    """``--cuda`` (or a CUDA device) on a machine without one: say so before planning.

    ``options``: mergekit's ``MergeOptions``, or the device name our commands were given.
    """
    device = str(options if isinstance(options, str) else getattr(options, "device", None) or "cpu")
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        why = (
            "Torch not compiled with CUDA enabled"
            if not torch.backends.cuda.is_built()
            else ("no CUDA GPUs are available")
        )
        raise ConfigError(f"--cuda: no CUDA device here ({why}); run without --cuda")


def check_roles_on_base(config: Any, method: str) -> None:
    """A role other than finetuned given to ``base_model`` itself cannot work."""
    base = config.base_model
    for scope in inputs(config):
        role = str(scope.parameters.get("role", "")).strip().lower()
        if role and role != "finetuned" and base is not None and scope.reference == base:
            raise ConfigError(
                f"{method}: the {role} model is base_model itself ({base}); "
                + (
                    "V = aligned − unaligned would be 0 and the gate could not work: give the "
                    "model alignment started from"
                    if role == "unaligned"
                    else "give the safety fine-tune"
                )
            )


def check_alignment_present(config: Any, method: str) -> None:
    """An ``unaligned`` model byte-identical to ``base_model`` in every matrix: V = 0, refused
    before anything merges (the kernels still catch what this cheap comparison cannot see)."""
    base = config.base_model
    if base is None:
        return
    for scope in inputs(config):
        role = str(scope.parameters.get("role", "")).strip().lower()
        model = scope.reference
        if role == "unaligned" and model != base and model.lora is None and base.lora is None:
            if mergekit_internals.same_matrices(base, model):
                raise ConfigError(
                    f"{method}: the unaligned model {model} equals base_model {base} in every "
                    "gated matrix (V = 0): the gate cannot work; give the model alignment "
                    "started from"
                )


def model_files(directory: Path) -> list[Path]:
    """The files in ``directory`` that make it load as a model (see ``MODEL_FILES``)."""
    if not directory.is_dir():
        return []
    return sorted({path for pattern in MODEL_FILES for path in directory.glob(pattern)})


IN_PROGRESS_SHARD = re.compile(r"^[\w.]+-\d+\.(safetensors|bin)$")
"""What mergekit names a shard while it writes (``model-3.safetensors``): renamed to
``model-00003-of-00012.safetensors`` (or ``model.safetensors``) once every shard is written."""


def interrupted_merge(out: Path) -> bool:
    """``out`` holds nothing but shards mergekit had not finished: a merge that was killed."""
    entries = list(out.iterdir()) if out.is_dir() else []
    return bool(entries) and all(
        entry.is_file() and IN_PROGRESS_SHARD.match(entry.name) for entry in entries
    )


def overwrite_allowed() -> bool:
    return os.environ.get(OVERWRITE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def guard_output(out: Path, run: runs.MergeRun) -> None:
    """Refuse to write over a model unless asked; a failed run then removes what it added.

    mergekit has no ``--overwrite``: it writes into the directory and leaves an old model's other
    shards and index beside the new ones. With ``MERGEKIT_SAFETY_OVERWRITE=1`` the old model's
    files, and what mergekit wrote beside them (card, recipe, tokenizer), go before anything is
    written; any other file stays, and one line names it. config.json is written last by
    mergekit, so a run cut short leaves no directory that loads as a model.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory")
    check_writable(out)
    if interrupted_merge(out):  # shards of a killed run (SIGKILL, an older version): not a model
        for path in out.iterdir():
            path.unlink()
    existing = model_files(out)
    if existing:
        if not overwrite_allowed():
            names = ", ".join(path.name for path in existing[:3])
            raise ConfigError(
                f"output {out} already holds a model ({names}); choose a new directory or set "
                f"{OVERWRITE_ENV}=1 to replace it"
            )
        owned = existing + [out / name for name in MERGEKIT_OUTPUTS if (out / name).is_file()]
        for path in owned:
            path.unlink()
        kept = sorted(path.name + ("/" if path.is_dir() else "") for path in out.iterdir())
        if kept and not run.quiet:
            print(
                f"mergekit-safety: replacing the model in {out}; left as they were: "
                + ", ".join(kept),
                file=sys.stderr,
            )
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

    run.on_failure(remove_what_the_run_added)


# --- every planned tensor ----------------------------------------------------------------------


def on_tensor(tensor: PlannedTensor) -> None:
    """Roles, parameter domains and shapes of one planned tensor, before anything loads."""
    method = ours(tensor.method)
    if method is None:
        return
    refuse_unresolved(tensor)
    roles = {
        model: tensor.input_parameters[model]["role"]
        for model in tensor.models
        if model != tensor.base and "role" in tensor.input_parameters.get(model, {})
    }
    method.rule.check(roles, tensor.base)
    unaligned = [model for model, role in roles.items() if role is Role.UNALIGNED]
    run = runs.current() or runs.MergeRun()  # a task built outside any merge: checked alone
    if unaligned:
        watch_planned((tensor.base, unaligned[0]), tensor.name)
    method.check_values(tensor.parameters, tensor.input_parameters)
    others = tuple(m for m in tensor.models if m != tensor.base)
    models = (tensor.base, *others) if tensor.base else others
    if run.first_time(("architecture", models)):  # once per merge, not per tensor
        check_same_architecture(models)
    check_inputs(tensor, run)


def check_inputs(tensor: PlannedTensor, run: runs.MergeRun) -> None:
    """Every input holds the planned tensor, all of one shape: from the file headers, before
    any tensor loads (mergekit would find out while executing, after earlier tensors merged)."""
    found: dict[Any, tuple[int, ...]] = {}
    for planned in tensor.inputs:
        shapes = run.headers.get(planned.model)
        if shapes is None:
            shapes = run.headers[planned.model] = mergekit_internals.tensor_shapes(planned.model)
        if not shapes:
            continue  # not in safetensors files: mergekit's own check runs
        shape = next((shapes[name] for name in planned.names if name in shapes), None)
        if shape is not None:
            found[planned.model] = shape
        elif not planned.optional and not mergekit_internals.converts_checkpoints(planned.model):
            raise ConfigError(
                f"{planned.model} has no tensor {tensor.name}: the models are not of one "
                "architecture, or a checkpoint is incomplete"
            )
    if len(set(found.values())) < 2 or (tensor.vocabulary and tensor.vocabulary_aligned):
        return
    if tensor.vocabulary:
        raise ConfigError(
            f"{tensor.name}: the models' vocabularies differ in size "
            f"({', '.join(str(shape) for shape in found.values())}); add "
            "`tokenizer: {source: base}` to the recipe to align them"
        )
    (first, want), *others = found.items()
    model, got = next((m, shape) for m, shape in others if shape != want)
    raise ConfigError(
        f"mismatched models: {tensor.name} is {'×'.join(map(str, got))} in {model} but "
        f"{'×'.join(map(str, want))} in {first}"
    )


def refuse_unresolved(tensor: PlannedTensor) -> None:
    """A tensor carrying top_k/fraction outside a merge that ranks (``mergekit-pytorch``, a
    planner called by hand): stop now."""
    run = runs.current()
    if run is not None and run.selection is not None:
        return  # MergePlanner inside a merge: on_planned resolves it before anything runs
    if any(tensor.parameters.get(key) is not None for key in SELECTORS):
        raise ConfigError(UNRANKED)


UNRANKED = (
    "top_k/fraction need the whole model ranked first, which mergekit-yaml, "
    "mergekit-multi, run_merge and the Python API do; for this command write the "
    "threshold out with `mergekit-safety inspect RECIPE --top-k K --write-recipe OUT.yml`"
)


# --- a finished merge ---------------------------------------------------------------------------


def on_written(written: WrittenMerge) -> None:
    """One line once the merge's tensors are written: where, the method, what was merged."""
    run = runs.current()
    if run is None:
        return
    run.written = True
    if run.recipe is None or run.out_path != written.out_path:
        return  # not planned by MergePlanner (mergekit-pytorch): it says nothing
    safety = [t for t in written.tensors if ours(t.method) is not None]
    if not safety or run.quiet:
        return
    method = safety[0].method
    gated = [run.decisions[t.name].merge for t in safety if t.name in run.decisions]
    if gated:
        what = f"{sum(gated)} of {len(gated)} gated matrices merged"
    else:
        what = ungated_count(ours(method), safety, run)
    from tqdm.auto import tqdm

    tqdm.write(f"mergekit-safety: wrote {written.out_path} ({method}, {what})", file=sys.stderr)


def ungated_count(method: RoleCheckedMethod, tensors: Any, run: runs.MergeRun) -> str:
    """How many tensors an ungated merge changed: all (safe_linear, harm_removal), or those its
    ``changes`` says, by the shapes read while planning (lox, lssf, safe_delta)."""
    if method.changes is None:
        return f"all {len(tensors)} tensors merged"
    changed = 0
    for tensor in tensors:
        shape = run.headers.get(tensor.base, {}).get(tensor.name)
        if shape is None or method.changes(tensor.name, shape, tensor.vocabulary,
                                           tensor.parameters):  # fmt: skip
            changed += 1
    kept = len(tensors) - changed
    if not kept:
        return f"all {len(tensors)} tensors merged"
    source = "aligned" if method.unmerged == "aligned" else "fine-tuned"
    return f"{changed} of {len(tensors)} tensors merged, {kept} kept as the {source} model's"


# --- top_k / fraction ---------------------------------------------------------------------------


def expect_selection(recipe: PlannedRecipe) -> None:
    """A recipe that ranks (``top_k``/``fraction``, validated here): the merge's run expects
    τ from :func:`on_planned`; outside a merge there is no run to carry it, so stop now."""
    from mergekit_safety.recipe.scoring import selection_of

    selection = selection_of(recipe.config)
    if selection is None:
        return
    run = runs.current()
    if run is None:
        raise ConfigError(UNRANKED)
    run.selection = selection


def on_planned(recipe: PlannedRecipe, tensors: list[PlannedTensor]) -> None:
    """The planned merge ranks by ρ: score its own tasks now, and keep τ in the merge's run."""
    from mergekit_safety.recipe.scoring import resolve_records, score_planned, selection_of

    run = runs.current()
    method = ours(recipe.config.merge_method)
    if run is None or run.selection is None or run.threshold is not None or method is None:
        return
    if selection_of(recipe.config) is None:  # a plan of another recipe inside this merge
        return
    started = time.perf_counter()
    records = score_planned(
        recipe.config,
        recipe.options,
        lambda: tensors,
        require_unaligned=True,
        gated_only=True,
        selection=run.selection,  # K > N stops before the rho pass
    )
    resolved, _checked = resolve_records(records, run.selection, method)
    run.threshold = resolved.threshold
    # the planner's config, which run_merge writes as the card's recipe when given no source
    resolve_selection(recipe.config, resolved.threshold, copy=False)
    if not recipe.options.quiet:
        print(
            f"mergekit-safety: {resolved.summary()} "
            f"(rho pass {time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
        )
