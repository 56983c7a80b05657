"""Score every weight of a recipe through mergekit's own planner, loader and executor.

``inspect`` must see exactly the tensors and resolved parameters the merge would: so it plans the
recipe with mergekit's ``MergePlanner`` and swaps each merge task for a :class:`GateReport` that
computes the method's decision instead of the merged tensor. Nothing is written.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from mergekit.architecture import get_architecture_info
from mergekit.graph import Executor, Task
from mergekit.io.tasks import LoaderCache
from mergekit.merge import _model_out_config
from mergekit.merge_methods import TensorEntry, TensorGroup, TensorMetadata, get
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
from mergekit.options import MergeOptions
from mergekit.plan import MergePlanner

from mergekit_safety.errors import ConfigError
from mergekit_safety.methods.base import RoleCheckedMethod, RoleInputs
from mergekit_safety.preflight import load_recipe


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
    recipe: str | os.PathLike, *, device: str = "cpu", quiet: bool = False
) -> list[dict]:
    """One record per output tensor, in the order mergekit plans them."""
    config = load_recipe(recipe)
    method = get(config.merge_method)
    if not isinstance(method, RoleCheckedMethod):
        raise ConfigError(
            f"inspect explains safe_linear, safemerge and safe_lora recipes; "
            f"{recipe} uses {config.merge_method}"
        )
    if any(model.lora is not None for model in config.referenced_models()):
        return inspect_adapters(recipe, device=device)
    options = MergeOptions(device=device, quiet=quiet)
    reports = [GateReport(merge=task) for task in merge_tasks(config, options)]
    order = {report: index for index, report in enumerate(reports)}
    executor = Executor(reports, math_device=torch.device(device))
    results = sorted(
        executor.run(quiet=quiet, desc="Scoring weights"), key=lambda pair: order[pair[0]]
    )
    return [record for _report, record in results]


def merge_tasks(config: Any, options: MergeOptions) -> list[ExecuteMergeMethodTask]:
    """The per-tensor merge tasks mergekit plans for ``config``, in its order; nothing loads.

    Each carries the output weight and the parameters resolved for it, exactly as
    ``mergekit-yaml`` would run it; roles are checked while planning.
    """
    arch_info = get_architecture_info(config, options)
    LoaderCache().setup(options=options)
    out_config = _model_out_config(config, arch_info, trust_remote_code=False)
    planner = MergePlanner(config, arch_info, options=options, out_model_config=out_config)
    # plan_in_memory() fails in mergekit 0.1.5 (pydantic re-validates the generic Task), so take
    # the merge tasks from the to-disk plan; its writer tasks never run, so nothing is written.
    return [
        target.tensor_task
        for target in planner.plan_to_disk(out_path=os.devnull)
        if isinstance(getattr(target, "tensor_task", None), ExecuteMergeMethodTask)
    ]


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
