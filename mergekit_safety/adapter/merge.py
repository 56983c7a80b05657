"""Each method in adapter space, module by module: exact, and gated by the method's own ``decide``.

With ``Δᵢ = sᵢ Bᵢ Aᵢ``, a module the method keeps gets ``[s₁B₁, …] [A₁; …]`` (θ_ft, or
θ_a + ΣΔᵢ); a merged one gets the factors of the method's own ``adapter`` form (each method's
module says its formula). The scale is folded into the left factor, so the written adapter runs
at scale 1.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mergekit_safety.adapter.factors import AdapterInputs
from mergekit_safety.adapter.plan import AdapterPlan
from mergekit_safety.core.roles import Role
from mergekit_safety.core.selection import Resolved, resolve, unranked, with_threshold
from mergekit_safety.methods.base import Decision


@dataclass(frozen=True)
class MergedModule:
    """The adapter's new factors for one module (``Δ′ = b a``) and the decision behind them."""

    module: str
    b: torch.Tensor
    a: torch.Tensor
    decision: Decision
    gated: bool


def merge_module(
    method: str,
    inputs: AdapterInputs,
    parameters: Mapping[str, Any],
    weights: Mapping[Hashable, Any],
) -> tuple[Decision, torch.Tensor, torch.Tensor]:
    """The method's decision for this module and its new factors ``(B′, A′)``."""
    from mergekit.merge_methods import get

    rules = get(method)
    decision = rules.decide(inputs, parameters)
    if not decision.merge:
        return decision, inputs.left(), inputs.right()
    left, right = rules.adapter_form(inputs, weights)
    return decision, left, right


def input_weights(method: str, task: Any, roles: Mapping[Hashable, Role]) -> dict[Hashable, float]:
    """Each input's ``weight`` as mergekit resolved it for this tensor (or the method's default
    for its role, safemerge's)."""
    from mergekit.merge_methods import get

    defaults = get(method).default_weights
    out = {}
    for model, role in roles.items():
        if role == Role.UNALIGNED:
            continue
        value = task.input_parameters[model].get("weight")
        if value is None and role in defaults:
            value = defaults[role]
        out[model] = value
    return out


def merge_adapters(plan: AdapterPlan, device: str = "cpu") -> Iterator[MergedModule]:
    """Every module any fine-tune adapts, in mergekit's tensor order, one full tensor pair at a
    time (V is read only where the gate asks for it). A ``top_k``/``fraction`` recipe is first
    ranked over every module's ρ from its factors (a pass of ρ alone), then merged at the τ
    that selects exactly those modules."""
    threshold = None if plan.selection is None else rank_modules(plan, device).threshold
    for module, task in plan.modules():
        inputs = _inputs(plan, module, task, device)
        weights = input_weights(plan.method, task, plan.roles)
        parameters = task.parameters
        if threshold is not None:
            parameters = with_threshold(parameters, threshold)
        decision, b, a = merge_module(plan.method, inputs, parameters, weights)
        yield MergedModule(
            module, b.cpu().contiguous(), a.cpu().contiguous(), decision, inputs.gateable
        )


def rank_modules(plan: AdapterPlan, device: str = "cpu") -> Resolved:
    """The plan's selection resolved to τ over the adapted modules' ρ (gateable ones)."""
    from mergekit.merge_methods import get

    assert plan.selection is not None
    if plan.unaligned is None:
        raise unranked(plan.method)
    rules = get(plan.method)
    scores: dict[str, float | None] = {}
    for module, task in plan.modules():
        inputs = _inputs(plan, module, task, device)
        if inputs.gateable:
            scores[f"{module}.weight"] = rules.decide(inputs, task.parameters).rho
    return resolve(plan.selection, scores)


def _inputs(plan: AdapterPlan, module: str, task: Any, device: str) -> AdapterInputs:
    """One module's factors by role, and a reader of its V."""
    roles = plan.roles
    finetuned = [
        (model, plan.adapters[model].modules[module])
        for model in task.models
        if roles.get(model) == Role.FINETUNED and module in plan.adapters[model].modules
    ]
    safe = next(
        (
            (model, plan.adapters[model].modules[module])
            for model in task.models
            if roles.get(model) == Role.SAFE and module in plan.adapters[model].modules
        ),
        None,
    )
    return AdapterInputs(
        finetuned=finetuned,
        safe=safe,
        gateable=not task.vocabulary,
        alignment=plan.alignment_reader(task, device) if plan.unaligned else None,
        device=device,
    )
