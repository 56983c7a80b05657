"""Safe LoRA (Hsu et al., arXiv 2405.16833): project drifting updates onto the alignment subspace.

For 2-D weights with ρ ≤ ``threshold``: θ = θ_aligned + C Δ, ``C = V Vᵀ / ‖V‖_F``; otherwise θ_ft.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from mergekit.merge_methods.base import BasePolicy, InputContract, PerNonBase, TensorGroup
from mergekit.merge_methods.easy_define import merge_method

from mergekit_safety.core.parameters import DEFAULT_THRESHOLD, Threshold
from mergekit_safety.core.roles import Role, RoleRule, RoleValue
from mergekit_safety.core.subspace import drifts, score_and_project_if
from mergekit_safety.methods.base import (
    Decision,
    GateInputs,
    RoleCheckedMethod,
    RoleInputs,
    gate,
    gate_decision,
    note,
)

INCLUSIVE = True
"""Safe LoRA merges at ρ = τ (ρ ≤ τ), as the reference's ``>=`` on the cosine's complement."""


@merge_method(
    name="safe_lora",
    pretty_name="Safe LoRA",
    reference_url="https://arxiv.org/abs/2405.16833",
    contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
)
def safe_lora_merge(
    group: TensorGroup,
    role: PerNonBase[RoleValue] = Role.FINETUNED,
    threshold: Threshold = DEFAULT_THRESHOLD,
) -> torch.Tensor:
    inputs = RoleInputs.from_group(group, role)
    if inputs.gateable:
        rho, projected = score_and_project_if(
            inputs.update,
            inputs.alignment,
            lambda r: drifts(r, threshold, inclusive=INCLUSIVE),  # a kept matrix needs no C Δ
            tolerance=inputs.rounding(),
        )
        note(inputs, gate_decision(rho, threshold, inclusive=INCLUSIVE))
        if projected is not None:
            return inputs.cast_back(projected.add_(inputs.aligned))
    return inputs.kept()


def decide(inputs: GateInputs, parameters: Mapping[str, Any]) -> Decision:
    return gate(inputs, parameters["threshold"], inclusive=INCLUSIVE)


def adapter_form(inputs: Any, weights: Mapping[Any, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C [s₁B₁, …]) [A₁; …]``: C Δ keeps ``A`` and the rank."""
    return inputs.projected_left(), inputs.right()


safe_lora = RoleCheckedMethod(
    group=safe_lora_merge,
    decide=decide,
    inclusive=INCLUSIVE,
    adapter=adapter_form,
    rule=RoleRule("safe_lora", {Role.FINETUNED: (1, None), Role.UNALIGNED: (1, 1)}),
    weighted=frozenset(),
)
