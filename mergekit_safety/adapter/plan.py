"""Read a recipe for an adapter-space merge and check, before any full tensor loads, that the
result can be written exactly as a LoRA adapter.

The recipe is planned by mergekit itself (:func:`mergekit_internals.plan_tensors`), so each module
gets the parameters ``mergekit-yaml`` would resolve for its weight, and roles are checked
as the full merge checks them. Every reason an exact adapter is impossible is one ConfigError.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mergekit_safety import mergekit_internals
from mergekit_safety.adapter.source import FULL_MODEL, Adapter, read_adapter
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.roles import Role
from mergekit_safety.core.selection import Selection
from mergekit_safety.mergekit_internals import PlannedTensor
from mergekit_safety.recipe.load import load_recipe


def adapter_methods() -> tuple[str, ...]:
    """The registered methods with an adapter form, in registry order."""
    from mergekit_safety.methods import METHODS

    return tuple(m.spec.name for m in METHODS if m.adapter_form is not None)


def no_adapter_form() -> dict[str, str]:
    """Methods that stop in ``adapter`` with a reason of their own (use ``mergekit-yaml``)."""
    from mergekit_safety.methods import METHODS

    return {m.spec.name: m.adapter for m in METHODS if m.adapter_form is None and m.adapter}


@dataclass
class AdapterPlan:
    """The recipe, its inputs by role, the adapters read, and mergekit's task per weight."""

    config: Any
    method: str
    aligned: Any
    unaligned: Any | None
    roles: dict[Hashable, Role]
    adapters: dict[Hashable, Adapter]
    tasks: dict[str, PlannedTensor]
    """Weight name → the merge mergekit planned for it, in mergekit's order."""
    selection: Selection | None = None
    """The recipe's ``top_k``/``fraction``, ranked over the adapters' own ρ at merge time
    (planned without it: the planner's full-model ρ pass would see the aligned stand-ins)."""

    def modules(self) -> Iterator[tuple[str, PlannedTensor]]:
        """(module, task) for every module some fine-tune adapts, in mergekit's tensor order."""
        wanted = {
            module
            for model, adapter in self.adapters.items()
            if self.roles[model] == Role.FINETUNED
            for module in adapter.modules
        }
        for name, task in self.tasks.items():
            module = name.removesuffix(".weight")
            if module in wanted:
                yield module, task

    def alignment_reader(self, task: PlannedTensor, device: str) -> Callable[[], torch.Tensor]:
        """A reader of ``V = θ_aligned − θ_unaligned`` for ``task``'s weight, through mergekit's
        lazy loader: one tensor pair in memory at a time."""
        from mergekit_safety.core.subspace import compute_dtype

        def alignment() -> torch.Tensor:
            aligned = mergekit_internals.read_tensor(self.aligned, task, device=device)
            unaligned = mergekit_internals.read_tensor(self.unaligned, task, device=device)
            dtype = compute_dtype(aligned)
            return aligned.to(dtype, copy=True).sub_(unaligned.to(dtype))

        return alignment


def plan_adapter(recipe: Any, *, device: str = "cpu", source: str | None = None) -> AdapterPlan:
    """Everything checked and every adapter read; no full tensor loaded yet.

    ``recipe``: the recipe's path, or its configuration already read (``source`` names it).
    """
    from mergekit.options import MergeOptions

    if isinstance(recipe, str | os.PathLike):
        config, recipe = load_recipe(recipe), str(recipe)
    else:
        config, recipe = recipe, source or "the recipe"
    method = config.merge_method
    reasons = no_adapter_form()
    if method in reasons:
        raise ConfigError(
            f"{method} has no adapter form here: {reasons[method]}; use mergekit-yaml"
        )
    if method not in adapter_methods():
        raise ConfigError(
            f"adapter merges {', '.join(adapter_methods())} recipes; {recipe} uses {method}: "
            f"{FULL_MODEL}"
        )
    if not config.models:
        raise ConfigError(f"{recipe}: adapter handles recipes with `models:` (not slices)")
    if config.tokenizer_source is not None or config.tokenizer is not None:
        raise ConfigError(
            f"{recipe}: a tokenizer section changes the vocabulary, which a LoRA adapter cannot "
            f"carry; {FULL_MODEL}"
        )
    aligned = config.base_model
    if aligned is None:
        raise ConfigError(
            f"{method} needs base_model: the aligned model the fine-tune started from"
        )
    if aligned.lora is not None:
        raise ConfigError(f"base_model must be the aligned model itself, not {aligned}")
    from mergekit_safety.recipe.scoring import selection_of
    from mergekit_safety.recipe.walk import without_selection

    selection = selection_of(config)
    if selection is not None:
        config = without_selection(config, drop_threshold=True)
    options = MergeOptions(device=device, quiet=True)
    with stand_in_for_adapters(config, options):
        planned = mergekit_internals.plan_tensors(config, options)
        tasks = {task.name: task for task in planned}
    if not tasks:
        raise ConfigError(f"{recipe}: mergekit planned no tensors")
    first = next(iter(tasks.values()))
    roles = {
        model: Role(first.input_parameters[model]["role"])
        for model in first.models
        if model != first.base
    }
    for task in tasks.values():
        if task.parameters.get("merge_type", "linear") != "linear":
            raise ConfigError(
                f"merge_type {task.parameters['merge_type']} drops random entries of the full "
                f"update, which has no low-rank form; {FULL_MODEL}"
            )
        for model in roles:
            if Role(task.input_parameters[model]["role"]) != roles[model]:
                raise ConfigError(f"{model}: its role must be the same for every tensor")
    unaligned = None
    for model, role in roles.items():
        if role == Role.UNALIGNED:
            if model.lora is not None:
                raise ConfigError(f"{model}: the unaligned model must be a full model")
            unaligned = model
        elif model.lora is None:
            raise ConfigError(
                f"{model}: the {role.value} input is a full model, so the merge has no exact "
                f"adapter form; give it as aligned+adapter, or {FULL_MODEL}"
            )
        elif model.model != aligned.model:
            raise ConfigError(
                f"{model}: the adapter must sit on base_model ({aligned}) for an exact "
                f"adapter merge; {FULL_MODEL}"
            )
    adapters = {
        model: read_adapter(model.lora.path, model.lora.revision)
        for model, role in roles.items()
        if role != Role.UNALIGNED
    }
    for adapter in adapters.values():
        missing = [m for m in adapter.modules if f"{m}.weight" not in tasks]
        if missing:
            raise ConfigError(
                f"{adapter.where}: adapts {missing[0]}, which has no weight "
                f"{missing[0]}.weight in {aligned}"
            )
    check_factor_shapes(adapters, aligned)
    return AdapterPlan(
        config=config,
        method=method,
        aligned=aligned,
        unaligned=unaligned,
        roles=roles,
        adapters=adapters,
        tasks=tasks,
        selection=selection,
    )


def check_factor_shapes(adapters: dict[Hashable, Adapter], aligned: Any) -> None:
    """Every adapter's B·A must have its base weight's shape, or peft could not load the result.

    Read from the aligned model's file headers: nothing is loaded. (An adapter trained on another
    model of the same architecture but other widths would otherwise merge "successfully".)
    """
    shapes = mergekit_internals.tensor_shapes(aligned)
    if not shapes:
        return
    for adapter in adapters.values():
        for module, factors in adapter.modules.items():
            want = shapes.get(f"{module}.weight")
            got = (factors.b.shape[0], factors.a.shape[1])
            if want is not None and tuple(want) != got:
                raise ConfigError(
                    f"{adapter.where}: {module} has LoRA factors for a {got[0]}×{got[1]} weight, "
                    f"but {aligned} has {module}.weight of {want[0]}×{want[1]}: the adapter was "
                    "trained on another model"
                )


@contextlib.contextmanager
def stand_in_for_adapters(config: Any, options: Any) -> Iterator[None]:
    """Let mergekit's planner index ``aligned+adapter`` inputs by the aligned model's own files.

    The planner opens an input's index for optional weights (``lm_head``); for an adapter input
    that would merge the adapter into a full copy first — the very work this path avoids.
    """
    mergekit_internals.setup_loader(options)
    stand_ins = [
        model
        for model in config.referenced_models()
        if model.lora is not None and model.model == config.base_model.model
    ]
    with mergekit_internals.stand_in(stand_ins, config.base_model):
        yield
