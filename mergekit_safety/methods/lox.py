"""LoX, Low-Rank Extrapolation (Perin et al., arXiv 2506.15606): harden an aligned model before it
is fine-tuned, by extrapolating the top-k singular directions of its alignment update.

Per weight with two or more axes: θ = θ_aligned + α · SVD_k(θ_aligned − θ_unaligned), the rank-k
truncated SVD (``k = 0``: the whole update, no SVD); 1-D tensors (norms, biases) stay aligned.
Defaults are the reference code's, VITA-Group/LoX ``safety/LoX.py`` (commit 9213ce6): ``k = 0``
(line 10, "k=0 extrapolates full rank") and ``coef`` α = 1 (line 11); like it (line 33) every
tensor with more than one axis is extrapolated, embeddings and ``lm_head`` included. α above
:data:`ALPHA_RANGE` warns. The output is the hardened *aligned*
model: fine-tune it next (README, "LoX: harden, then fine-tune").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from mergekit.merge_methods.base import BasePolicy, InputContract, PerNonBase, TensorGroup
from mergekit.merge_methods.easy_define import merge_method

from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.parameters import Alpha, Rank, warn_once
from mergekit_safety.core.roles import Role, RoleRule, RoleValue
from mergekit_safety.core.subspace import low_rank_approximation
from mergekit_safety.methods.base import Decision, GateInputs, RoleCheckedMethod, RoleInputs

LOX_K = 0
"""LoX's rank; 0 extrapolates the whole update (provenance: the module docstring)."""
LOX_ALPHA = 1.0
"""LoX's extrapolation factor α."""
ALPHA_RANGE = 2.0
"""α past this warns: twice the reference code's default ``--coef 1`` (VITA-Group/LoX
``safety/LoX.py`` line 11); larger extrapolations leave the region the method was tried in."""


@merge_method(
    name="lox",
    pretty_name="LoX",
    reference_url="https://arxiv.org/abs/2506.15606",
    contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
)
def lox_merge(
    group: TensorGroup,
    role: PerNonBase[RoleValue] = Role.FINETUNED,
    k: Rank = LOX_K,
    alpha: Alpha = LOX_ALPHA,
) -> torch.Tensor:
    inputs = RoleInputs.from_group(group, role)
    aligned = inputs.stored_aligned
    if aligned.ndim < 2:
        return aligned
    update = inputs.alignment
    flat = update.reshape(update.shape[0], -1)  # an LLM's weights are 2-D already
    extrapolated = low_rank_approximation(flat, int(k)).reshape(update.shape)
    return inputs.cast_back(extrapolated.mul_(alpha).add_(inputs.aligned))


def decide(inputs: GateInputs, parameters: Mapping[str, Any]) -> Decision:
    """What ``inspect`` reports: every tensor with two or more axes is extrapolated."""
    if getattr(inputs, "stored_aligned", None) is not None and inputs.stored_aligned.ndim < 2:
        return Decision(False, "1-D: stays aligned")
    k = int(parameters.get("k", LOX_K))
    what = "the whole alignment update" if k == 0 else f"its top {k} singular directions"
    return Decision(True, f"extrapolated: {what}, alpha {parameters.get('alpha', LOX_ALPHA):g}")


def changes(name: str, shape: tuple[int, ...], vocabulary: bool, parameters: Mapping) -> bool:
    """What the kernel extrapolates: every tensor of two or more axes; 1-D ones stay aligned."""
    return len(shape) >= 2


def check_recipe(config: Any, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """``k`` (directions kept) is at most the smaller side of every matrix LoX changes."""
    k = (config.parameters or {}).get("k")
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        return
    for name, shape in shapes.items():
        if len(shape) == 2 and k > min(shape):
            raise ConfigError(
                f"lox: k = {k} is more than {name} has ({shape[0]}×{shape[1]}: at most "
                f"{min(shape)}); use k <= {min(shape)}, or 0 for the whole update"
            )


def check_values(method: str, shared: Mapping[str, Any]) -> None:
    """Warn (once per merge) for an α past :data:`ALPHA_RANGE`."""
    alpha = shared.get("alpha")
    if alpha is not None and alpha > ALPHA_RANGE:
        warn_once(
            (method, "alpha", alpha),
            f"mergekit-safety: {method}: alpha {alpha:g} is past {ALPHA_RANGE:g}, beyond "
            "the extrapolations LoX was run with; check the model still answers",
        )


lox = RoleCheckedMethod(
    group=lox_merge,
    decide=decide,
    changes=changes,
    rule=RoleRule("lox", {Role.UNALIGNED: (1, 1)}),
    gates=False,
    weighted=frozenset(),
    unmerged="aligned",
    check_recipe=check_recipe,
    check_values=check_values,
    adapter="its output is a full hardened model to fine-tune, and SVD_k of a full-rank "
    "alignment update is no fine-tune's LoRA factors",
)
