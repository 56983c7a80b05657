"""``inspect``: the gate's decision for every weight of a recipe, before anything is merged.

Full models are scored through mergekit's planner (:mod:`mergekit_safety.recipe.scoring`); a recipe
of LoRA adapters from the factors, exactly as ``mergekit-safety adapter`` would merge them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mergekit.merge_methods import get
from mergekit.options import MergeOptions

from mergekit_safety.adapter.merge import merge_adapters
from mergekit_safety.adapter.plan import plan_adapter
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.selection import Resolved, Selection
from mergekit_safety.methods import method_names
from mergekit_safety.methods.base import RoleCheckedMethod
from mergekit_safety.recipe.load import read_recipe
from mergekit_safety.recipe.lora_cache import lora_cache, merged_copy
from mergekit_safety.recipe.scoring import (
    TensorDecision,
    resolve_records,
    score_config,
    selection_of,
)
from mergekit_safety.recipe.walk import without_selection


def inspect_recipe(
    recipe: str | os.PathLike,
    *,
    device: str = "cpu",
    quiet: bool = False,
    lora_merge_cache: str | None = None,
) -> list[dict]:
    """One record per output tensor, in the order mergekit plans them."""
    found = inspect(recipe, device=device, quiet=quiet, lora_merge_cache=lora_merge_cache)
    return [record.as_dict() for record in found.records]


@dataclass(frozen=True)
class Inspection:
    """What ``inspect`` found: one record per tensor, and the τ a rank selection resolved to."""

    method: str
    records: list[TensorDecision]
    resolved: Resolved | None = None
    recipe: Mapping[str, Any] = field(default_factory=dict)
    """The recipe as written (read once: ``--write-recipe`` and the plot's τ start from it)."""


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
    directory, removed after), keyed by the adapters' content
    (:mod:`mergekit_safety.recipe.lora_cache`).
    """
    data, config = read_recipe(recipe)
    method = get(config.merge_method)
    if not isinstance(method, RoleCheckedMethod):
        raise ConfigError(
            f"inspect explains {method_names()} recipes; {recipe} uses {config.merge_method}"
        )
    if selection is None:
        selection = selection_of(config)
    if selection is None and lora_merge_cache is None and _has_adapter(config):
        try:  # scored from the factors, as `mergekit-safety adapter` would merge them
            found = inspect_adapters(config, device=device, source=str(recipe))
            return Inspection(config.merge_method, found, recipe=data)
        except ConfigError:  # no exact adapter form (say dare_linear): score merged copies
            pass
    with lora_cache(config.referenced_models(), lora_merge_cache) as cache:
        for reference in config.referenced_models():
            merged_copy(reference, cache)
        options = MergeOptions(device=device, quiet=quiet, lora_merge_cache=cache)
        if selection is None:
            records = score_config(config, options, cache=False)
            return Inspection(config.merge_method, records, recipe=data)
        config = without_selection(config, drop_threshold=True)
        records = score_config(config, options, require_unaligned=True, selection=selection)
    resolved, decided = resolve_records(records, selection, method)
    return Inspection(config.merge_method, decided, resolved, recipe=data)


def _has_adapter(config: Any) -> bool:
    return any(model.lora is not None for model in config.referenced_models())


def inspect_adapters(
    recipe: str | os.PathLike | Any, *, device: str = "cpu", source: str | None = None
) -> list[TensorDecision]:
    """The records for a recipe of LoRA adapters, from their factors (what ``adapter`` writes).

    ``recipe``: its path, or its configuration already read (``source`` names it in messages).
    Each adapted module only: a weight no fine-tune adapts has Δ = 0 and keeps θ_aligned.
    """
    plan = plan_adapter(recipe, device=device, source=source)
    return [
        TensorDecision(
            tensor=f"{m.module}.weight",
            shape=[m.b.shape[0], m.a.shape[1]],
            gated=m.gated,
            rho=m.decision.rho,
            merge=m.decision.merge,
            reason=m.decision.reason,
        )
        for m in merge_adapters(plan, device=device)
    ]
