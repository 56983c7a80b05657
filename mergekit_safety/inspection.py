"""Score every weight of a recipe through mergekit's own planner, loader and executor.

``inspect`` must see exactly the tensors and resolved parameters the merge would: so it plans the
recipe with mergekit's ``MergePlanner`` and swaps each merge task for a :class:`GateReport` that
computes the method's decision instead of the merged tensor. Nothing is written.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mergekit.architecture import get_architecture_info
from mergekit.config import MergeConfiguration
from mergekit.graph import Executor, Task
from mergekit.io.tasks import LoaderCache
from mergekit.merge import _model_out_config
from mergekit.merge_methods import TensorEntry, TensorGroup, TensorMetadata, get
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
from mergekit.options import MergeOptions
from mergekit.plan import MergePlanner

from mergekit_safety.errors import ConfigError
from mergekit_safety.lora_cache import lora_cache, merged_copy
from mergekit_safety.methods.base import RoleCheckedMethod, RoleInputs
from mergekit_safety.preflight import load_recipe
from mergekit_safety.roles import Role
from mergekit_safety.selection import SELECTORS, Resolved, Selection, parse_selection, resolve


class GateReport(Task[dict]):
    """The decision a merge task's method takes for its tensor, as a JSON-ready record."""

    merge: ExecuteMergeMethodTask

    def arguments(self) -> dict[str, Task]:
        return {"tensors": self.merge.gather_tensors}

    def uses_accelerator(self) -> bool:
        return True

    def execute(self, tensors: dict[Any, torch.Tensor], **_kwargs: Any) -> dict:
        task = self.merge
        method = get(task.method_name)
        entries = tuple(
            TensorEntry(id=model, tensor=tensors[model], is_base=model == task.base_model)
            for model in task.model_order
            if model in tensors
        )
        group = TensorGroup(entries, TensorMetadata.from_weight_info(task.output_weight))
        roles = {entry.id: task.input_parameters[entry.id]["role"] for entry in group.non_base}
        method.rule.check(roles, task.base_model)
        inputs = RoleInputs.from_group(group, roles)
        decision = method.decide(inputs, dict(task.parameters.items()))
        return {
            "tensor": task.output_weight.name,
            "shape": list(group.base.tensor.shape),
            "gated": inputs.gateable,
            "rho": decision.rho,
            "merge": decision.merge,
            "reason": decision.reason,
        }


def inspect_recipe(
    recipe: str | os.PathLike,
    *,
    device: str = "cpu",
    quiet: bool = False,
    lora_merge_cache: str | None = None,
) -> list[dict]:
    """One record per output tensor, in the order mergekit plans them."""
    return inspect(recipe, device=device, quiet=quiet, lora_merge_cache=lora_merge_cache).records


@dataclass(frozen=True)
class Inspection:
    """What ``inspect`` found: one record per tensor, and the τ a rank selection resolved to."""

    method: str
    records: list[dict]
    resolved: Resolved | None = None


def inspect(
    recipe: str | os.PathLike,
    *,
    device: str = "cpu",
    quiet: bool = False,
    selection: Selection | None = None,
    lora_merge_cache: str | None = None,
) -> Inspection:
    """Score a recipe's tensors; with a selection (given, or the recipe's own), resolve it to τ.

    ``selection`` replaces any ``threshold``/``top_k``/``fraction`` the recipe sets.
    ``base+adapter`` inputs are merged into ``lora_merge_cache`` (default: a temporary
    directory, removed after), keyed by the adapters' content (:mod:`mergekit_safety.lora_cache`).
    """
    config = load_recipe(recipe)
    method = get(config.merge_method)
    if not isinstance(method, RoleCheckedMethod):
        raise ConfigError(
            f"inspect explains safe_linear, safemerge and safe_lora recipes; "
            f"{recipe} uses {config.merge_method}"
        )
    if selection is None:
        selection = selection_of(config)
    if selection is None and lora_merge_cache is None and _has_adapter(config):
        try:  # scored from the factors, as `mergekit-safety adapter` would merge them
            return Inspection(config.merge_method, inspect_adapters(recipe, device=device))
        except ConfigError:  # no exact adapter form (say dare_linear): score merged copies
            pass
    with lora_cache(config.referenced_models(), lora_merge_cache) as cache:
        for reference in config.referenced_models():
            merged_copy(reference, cache)
        options = MergeOptions(device=device, quiet=quiet, lora_merge_cache=cache)
        if selection is None:
            return Inspection(config.merge_method, score_config(config, options, cache=False))
        config = without_selection(config, drop_threshold=True)
        records = score_config(config, options, require_unaligned=True)
    resolved = resolve(selection, {r["tensor"]: r["rho"] for r in records if r["gated"]})
    return Inspection(config.merge_method, decide_at(records, resolved, method), resolved)


def selection_of(config: MergeConfiguration) -> Selection | None:
    """The recipe's ``top_k``/``fraction`` (global parameters only), validated."""
    settings = config.parameters or {}
    misplaced = [
        f"{where}: {key}" for where, scope in parameter_scopes(config) for key in SELECTORS
        if key in scope
    ]  # fmt: skip
    if misplaced:
        raise ConfigError(
            f"top_k and fraction rank the whole model: set them under the recipe's top-level "
            f"`parameters:`, not per model or slice ({misplaced[0]})"
        )
    raw = {key: settings.get(key) for key in SELECTORS}
    if all(value is None for value in raw.values()):
        return None
    for key, value in raw.items():
        if value is not None and not isinstance(value, int | float):
            raise ConfigError(f"{key} must be one number for the whole model; got {value!r}")
    threshold_set = "threshold" in settings or any(
        "threshold" in scope for _where, scope in parameter_scopes(config)
    )
    return parse_selection(raw["top_k"], raw["fraction"], threshold_set=threshold_set)


def parameter_scopes(config: MergeConfiguration) -> list[tuple[str, dict]]:
    """Every ``parameters:`` mapping below the top level: per model, slice, source, module."""
    scopes: list[tuple[str, dict]] = []
    for model in config.models or []:
        scopes.append((str(model.model), model.parameters or {}))
    modules = list((config.modules or {}).items())
    for name, module in [("", None), *modules]:
        slices = config.slices if module is None else module.slices
        if module is not None:
            scopes.append((f"module {name}", module.parameters or {}))
            scopes += [(str(m.model), m.parameters or {}) for m in module.models or []]
        for index, output in enumerate(slices or []):
            scopes.append((f"slice {index}", output.parameters or {}))
            scopes += [(str(s.model), s.parameters or {}) for s in output.sources]
    return scopes


def without_selection(config: MergeConfiguration, *, drop_threshold: bool) -> MergeConfiguration:
    """A deep copy without ``top_k``/``fraction`` (and ``threshold``) at the top level."""
    copy = config.model_copy(deep=True)
    dropped = (*SELECTORS, "threshold") if drop_threshold else SELECTORS
    copy.parameters = {k: v for k, v in (copy.parameters or {}).items() if k not in dropped}
    return copy


def decide_at(records: list[dict], resolved: Resolved, method: RoleCheckedMethod) -> list[dict]:
    """The records with each gated decision redone at the resolved τ."""
    chosen = {name for name, _rho in resolved.chosen}
    sign = "<=" if method.inclusive else "<"
    out = []
    for record in records:
        if record["gated"]:
            rho = record["rho"]
            merge = record["tensor"] in chosen
            assert rho is None or rho != rho or merge == (rho <= resolved.threshold)
            if merge:
                reason = f"rho {sign} threshold ({resolved.selection.label()})"
            elif rho is None or rho != rho:
                reason = "undefined rho (V = 0 or delta = 0)"
            else:
                reason = f"rho above threshold ({resolved.selection.label()})"
            record = {**record, "merge": merge, "reason": reason}
        out.append(record)
    return out


_SCORES: OrderedDict[str, list[dict]] = OrderedDict()
CACHE_SIZE = 8


def score_config(
    config: MergeConfiguration,
    options: MergeOptions,
    *,
    arch_info: Any = None,
    out_config: Any = None,
    require_unaligned: bool = False,
    gated_only: bool = False,
    cache: bool = True,
) -> list[dict]:
    """Plan ``config`` with mergekit's planner and run the gate on each tensor, writing nothing.

    With ``cache``, for ranking by ρ: kept in-process by what ρ depends on (models, roles, layer
    ranges, dtype, device and the weight files' sizes and times), so a sweep over λ × top_k
    scores the models once. The cached records' decisions are those at the recipe's own
    parameters, which the key leaves out: a caller ranking by ρ redoes them (:func:`decide_at`).
    """
    key = _score_key(config, options, gated_only) if cache else None
    if key in _SCORES:
        _SCORES.move_to_end(key)
        return _SCORES[key]
    tasks = merge_tasks(config, options, arch_info=arch_info, out_config=out_config)
    if gated_only:  # a vocabulary matrix is never gated: do not load it
        tasks = [task for task in tasks if task.output_weight.vocabulary_axis is None]
    if require_unaligned and not any(_has_unaligned(task) for task in tasks):
        raise ConfigError(
            f"top_k and fraction rank matrices by rho, which needs a model with role "
            f"'unaligned' ({config.merge_method} without one is ungated)"
        )
    reports = [GateReport(merge=task) for task in tasks]
    order = {report: index for index, report in enumerate(reports)}
    executor = Executor(reports, math_device=torch.device(options.device))
    results = sorted(
        executor.run(quiet=options.quiet, desc="Scoring weights"), key=lambda pair: order[pair[0]]
    )
    records = [record for _report, record in results]
    if key is None:
        return records
    _SCORES[key] = records
    while len(_SCORES) > CACHE_SIZE:
        _SCORES.popitem(last=False)
    return records


def _has_unaligned(task: ExecuteMergeMethodTask) -> bool:
    return any(values.get("role") == Role.UNALIGNED for values in task.input_parameters.values())


def _score_key(config: MergeConfiguration, options: MergeOptions, gated_only: bool) -> str:
    """What ρ depends on: the recipe without any parameter but ``role``, and the weight files."""
    data = config.model_dump(mode="json")

    def keep_roles(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ({r: v for r, v in (val or {}).items() if r == "role"} if k == "parameters"
                    else keep_roles(val))
                for k, val in node.items()
            }  # fmt: skip
        if isinstance(node, list):
            return [keep_roles(item) for item in node]
        return node

    stamps = {}
    for reference in config.referenced_models():
        folder = Path(reference.model.path).expanduser()
        if folder.is_dir():
            for file in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
                stat = file.stat()
                stamps[str(file.resolve())] = (stat.st_size, stat.st_mtime_ns)
    return json.dumps(
        [keep_roles(data), str(options.device), gated_only, stamps], sort_keys=True, default=str
    )


def merge_tasks(
    config: Any, options: MergeOptions, *, arch_info: Any = None, out_config: Any = None
) -> list[ExecuteMergeMethodTask]:
    """The per-tensor merge tasks mergekit plans for ``config``, in its order; nothing loads.

    Each carries the output weight and the parameters resolved for it, exactly as
    ``mergekit-yaml`` would run it; roles are checked while planning. The planner rewrites the
    config it is given, so it gets a copy.
    """
    if arch_info is None:
        arch_info = get_architecture_info(config, options)
        LoaderCache().setup(options=options)
    if out_config is None:
        out_config = _model_out_config(config, arch_info, trust_remote_code=False)
    planner = MergePlanner(
        config.model_copy(deep=True), arch_info, options=options, out_model_config=out_config
    )
    # plan_in_memory() fails in mergekit 0.1.5 (pydantic re-validates the generic Task), so take
    # the merge tasks from the to-disk plan; its writer tasks never run, so nothing is written.
    return [
        target.tensor_task
        for target in planner.plan_to_disk(out_path=os.devnull)
        if isinstance(getattr(target, "tensor_task", None), ExecuteMergeMethodTask)
    ]


def _has_adapter(config: Any) -> bool:
    return any(model.lora is not None for model in config.referenced_models())


def inspect_adapters(recipe: str | os.PathLike, *, device: str = "cpu") -> list[dict]:
    """The records for a recipe of LoRA adapters, from their factors (what ``adapter`` writes).

    Each adapted module only: a weight no fine-tune adapts has Δ = 0 and keeps θ_aligned.
    """
    from mergekit_safety.adapter.merge import merge_adapters
    from mergekit_safety.adapter.plan import plan_adapter

    plan = plan_adapter(str(recipe), device=device)
    return [
        {
            "tensor": f"{m.module}.weight",
            "shape": [m.b.shape[0], m.a.shape[1]],
            "gated": m.gated,
            "rho": m.decision.rho,
            "merge": m.decision.merge,
            "reason": m.decision.reason,
        }
        for m in merge_adapters(plan, device=device)
    ]
