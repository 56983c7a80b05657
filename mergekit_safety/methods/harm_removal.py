"""Safety Arithmetic's harm-direction removal (Hazra et al., arXiv 2406.11801).

With θ_harmful the aligned model fine-tuned on harmful data, τ_H = θ_harmful − θ_aligned and, per
tensor, θ = θ_ft − λ · trim(τ_H): ``trim`` keeps the ``density`` fraction of τ_H's entries with
the largest magnitude (the TIES variant; ``density: 1`` keeps all of it, the task-vector variant).
λ is ``scale`` (``lambda`` is a Python keyword, and mergekit names parameters after the
kernel's arguments); ``density`` is mergekit's TIES spelling (``fraction`` already means a share
of ranked matrices in this plugin). Several fine-tunes act as one: θ_ft = θ_aligned + ΣΔᵢ.

Defaults from declare-lab/safety-arithmetic (commit 404fbd5), HDR with TIES on SFT models:
``HDR/HDR_TIES_BASE_AND_SFT.ipynb`` cell 10, ``Lamda = 3`` and ``Top_k = 10``, which
``HDR/Ties_Merge.py`` lines 121–135 (``topk_values_mask``) turn into the top 10 % by magnitude:
λ = 3, density = 0.1. (The task-vector variant, no trimming, uses λ = 2 on SFT models,
``HDR/HDR_Task_Vector_SFT.ipynb`` cell 2; 0.1 on base and 6 on edited models.) The reference
trims over the whole model flattened into one vector; mergekit merges a tensor at a time, so
the cut here is per tensor, as mergekit's own ``ties`` does. Every tensor is edited, 1-D and
embeddings included, as the reference does (``HDR/task_vectors.py`` lines 28–31).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from mergekit.merge_methods.base import BasePolicy, InputContract, PerNonBase, TensorGroup
from mergekit.merge_methods.easy_define import merge_method

from mergekit_safety.core.parameters import Density, Scale
from mergekit_safety.core.roles import Role, RoleRule, RoleValue
from mergekit_safety.methods.base import Decision, GateInputs, RoleCheckedMethod, RoleInputs

HARM_REMOVAL_SCALE = 3.0
"""λ (provenance: the module docstring)."""
HARM_REMOVAL_DENSITY = 0.1
"""The share of τ_H kept (provenance as for λ)."""


@merge_method(
    name="harm_removal",
    pretty_name="Harm-direction removal (Safety Arithmetic)",
    reference_url="https://arxiv.org/abs/2406.11801",
    contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
)
def harm_removal_merge(
    group: TensorGroup,
    role: PerNonBase[RoleValue] = Role.FINETUNED,
    scale: Scale = HARM_REMOVAL_SCALE,
    density: Density = HARM_REMOVAL_DENSITY,
    allow_extrapolation: bool = False,
) -> torch.Tensor:
    inputs = RoleInputs.from_group(group, role)
    harm = trim(inputs.harm_update, density)
    if len(inputs.stored_finetuned) == 1:
        result = inputs.stored_finetuned[0].to(inputs.aligned.dtype, copy=True)
    else:
        result = inputs.aligned + inputs.update
    return inputs.cast_back(result.sub_(harm, alpha=scale))


def trim(update: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``⌊density · n⌋`` (at least one) largest-magnitude entries, zero the rest.

    ``torch.topk`` over the flat tensor: the kept count is exact, whatever ties there are.
    ``density`` lies in (0, 1], held there by the kernel's argument type (``Density``).
    """
    if density == 1:
        return update
    flat = update.reshape(-1)
    keep = max(1, int(density * flat.numel()))
    out = torch.zeros_like(flat)
    index = flat.abs().topk(keep, sorted=False).indices
    out[index] = flat[index]
    return out.view_as(update)


def decide(inputs: GateInputs, parameters: Mapping[str, Any]) -> Decision:
    """What ``inspect`` reports: every tensor has the trimmed harm direction removed."""
    density = parameters.get("density", HARM_REMOVAL_DENSITY)
    scale = parameters.get("scale", HARM_REMOVAL_SCALE)
    return Decision(True, f"theta_ft - {scale:g} * trim(tau_H), density {density:g}")


harm_removal = RoleCheckedMethod(
    group=harm_removal_merge,
    decide=decide,
    rule=RoleRule("harm_removal", {Role.FINETUNED: (1, None), Role.HARMFUL: (1, 1)}),
    gates=False,
    weighted=frozenset(),
    adapter="trim keeps entries of τ_H, not factors; untrimmed (density 1) it would be "
    "[s·B_ft, −λ·s·B_h]·[A_ft; A_h], which this version does not write",
)
