"""SafeMERGE (arXiv 2503.17239): merge only the drifting matrices with a safety fine-tune.

For 2-D weights with ρ < ``threshold``: θ = θ_aligned + w_ft Δ + w_safe (θ_safe − θ_aligned), with
the models' ``weight`` defaulting to 0.8 (fine-tuned) and 0.2 (safe) as in the reference code;
otherwise θ_ft. ``merge_type: dare_linear`` first drops each update's entries at random, keeping a
``density`` fraction rescaled by 1/density, from a generator seeded by ``seed`` and the tensor name.

The reference code mixes peft LoRA factors (A and B separately), which adds a cross term
w_ft·w_safe·(B_ft A_safe + B_safe A_ft); this method uses the paper's weight-space equation.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Literal

import torch
from mergekit.merge_methods.base import BasePolicy, InputContract, PerNonBase, TensorGroup
from mergekit.merge_methods.easy_define import merge_method

from mergekit_safety.core.parameters import DEFAULT_THRESHOLD, Density, Threshold, Weight
from mergekit_safety.core.roles import Role, RoleRule, RoleValue
from mergekit_safety.methods.base import (
    Decision,
    GateInputs,
    RoleCheckedMethod,
    RoleInputs,
    gate,
)

SAFEMERGE_WEIGHTS = {Role.FINETUNED: 0.8, Role.SAFE: 0.2}
"""safemerge's per-role ``weight`` where a model sets none, as in the reference code."""
SAFEMERGE_DENSITY = 0.5
"""The share of each update ``merge_type: dare_linear`` keeps."""


@merge_method(
    name="safemerge",
    pretty_name="SafeMERGE",
    reference_url="https://arxiv.org/abs/2503.17239",
    contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
)
def safemerge_merge(
    group: TensorGroup,
    role: PerNonBase[RoleValue] = Role.FINETUNED,
    weight: PerNonBase[Weight | None] = None,
    threshold: Threshold = DEFAULT_THRESHOLD,
    merge_type: Literal["linear", "dare_linear"] = "linear",
    density: Density = SAFEMERGE_DENSITY,
    seed: int = 0,
    allow_extrapolation: bool = False,
) -> torch.Tensor:
    inputs = RoleInputs.from_group(group, role)
    if not decide(inputs, {"threshold": threshold}).merge:
        return inputs.kept()
    sources = [
        *zip(inputs.finetuned_ids, inputs.updates, strict=True),
        (inputs.safe_id, inputs.safe_update),
    ]
    result = inputs.aligned.clone()
    for index, (key, update) in enumerate(sources):
        if merge_type == "dare_linear":
            update = dare(update, density, seed_for(group.metadata.name, seed, index))
        w = weight[key]
        result.add_(update, alpha=SAFEMERGE_WEIGHTS[role[key]] if w is None else w)
    return inputs.cast_back(result)


def dare(update: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """Drop-and-rescale (arXiv 2311.03099), reproducible across runs and devices.

    The mask is drawn on the CPU from a private generator, so it depends only on ``seed``.
    ``density`` lies in (0, 1], held there by the kernel's argument type (``Density``).
    """
    if density == 1:
        return update
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(update.shape, generator=generator) < density
    return update * keep.to(update.device) / density


def seed_for(tensor_name: str | None, seed: int, index: int) -> int:
    """A per-tensor, per-input seed: independent of the order mergekit runs tensors in."""
    return (zlib.crc32((tensor_name or "").encode()) * 1_000_003 + seed * 97 + index) % 2**63


def decide(inputs: GateInputs, parameters: Mapping[str, Any]) -> Decision:
    return gate(inputs, parameters["threshold"])


def adapter_form(inputs: Any, weights: Mapping[Any, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[w₁s₁B₁, …, w_s s_s B_s] [A₁; …; A_s]``; a module the safe LoRA skips: the fine-tunes'."""
    if inputs.safe is None:
        return inputs.left(weights), inputs.right()
    key, safe = inputs.safe
    left = torch.cat([inputs.left(weights), safe.scaled_left(weights[key]).to(inputs.device)], 1)
    right = torch.cat([inputs.right(), safe.right().to(inputs.device)], 0)
    return left, right


safemerge = RoleCheckedMethod(
    group=safemerge_merge,
    decide=decide,
    rule=RoleRule(
        "safemerge", {Role.FINETUNED: (1, None), Role.UNALIGNED: (1, 1), Role.SAFE: (1, 1)}
    ),
    weighted=frozenset(SAFEMERGE_WEIGHTS),
    default_weights=SAFEMERGE_WEIGHTS,
    adapter=adapter_form,
    read_only_with={
        "density": ("merge_type", "dare_linear"),
        "seed": ("merge_type", "dare_linear"),
    },
)
