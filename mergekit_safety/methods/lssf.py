"""LSSF, low-rank safety subspace fusion (Zhou et al., ACL 2025 Long Papers, pp. 30621–30638;
arXiv 2602.00038): add back the principal components of the alignment update.

Per 2-D weight without a vocabulary axis, with V = θ_aligned − θ_unaligned (the paper's safety
vector) and its SVD V = U Σ Wᵀ:

* the safety-critical rank ``r``: with ``p_i = σ_i² / Σ_j σ_j²`` and the entropy terms
  ``h_i = −p_i log p_i``, the smallest ``r`` whose cumulative entropy ``Σ_{i≤r} h_i`` reaches
  the share ``eta`` of the whole spectrum's ``Σ_i h_i`` (the safety singular value entropy),
  capped at ``max_rank`` (0: no cap);
* the projector onto the safety subspace ``P = U_r U_rᵀ`` and the fusion
  θ = θ_ft + α · P V (= θ_ft + α · U_r Σ_r W_rᵀ, the rank-r truncation of V).

Everything else (1-D tensors, embeddings, ``lm_head``) keeps θ_ft. Several fine-tunes act as
one: θ_ft = θ_aligned + ΣΔᵢ.

No reference code was published (SafeTune's module says so, and none could be found); the
paper's full text could not be read offline. The rule above follows the paper's abstract and
SafeTune's reading of its Eqs. 1, 5–7 and 13 (Lexsi-Labs/SafeTune commit 87deac3,
``src/safetune/interventions/recover/lssf.py`` lines 91–119 and 244–247); its defaults
(η = 0.85, cap 8, α = 1) are SafeTune's ``LSSFTrainer`` defaults, not checked against the
paper. The paper's weighted projector (Eqs. 10–11, α_1 > 1) is not implemented: at its default
(α_1 = 1) it is the plain projector used here. See ``docs/faithfulness.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from mergekit.merge_methods.base import BasePolicy, InputContract, PerNonBase, TensorGroup
from mergekit.merge_methods.easy_define import merge_method

from mergekit_safety.methods.base import Decision, GateInputs, RoleCheckedMethod, RoleInputs
from mergekit_safety.parameters import LSSF_ALPHA, LSSF_ETA, LSSF_MAX_RANK, Alpha, Eta, Rank
from mergekit_safety.roles import Role, RoleRule, RoleValue
from mergekit_safety.subspace import truncated_svd


def entropy_rank(singular_values: torch.Tensor, eta: float, max_rank: int = 0) -> int:
    """The safety-critical rank: the fewest leading directions holding ``eta`` of the entropy.

    ``p_i = σ_i² / Σσ²``, ``h_i = −p_i log p_i`` (0 log 0 = 0); the smallest ``r`` with
    ``Σ_{i≤r} h_i ≥ eta · Σ h_i``, at least 1, at most ``max_rank`` (0: no cap). A spectrum of
    one nonzero direction has zero entropy: rank 1. All zero: rank 0 (nothing to add).
    """
    energy = singular_values.double().square()
    total = float(energy.sum())
    if total == 0:
        return 0
    p = energy / total
    terms = torch.where(p > 0, -p * torch.log(torch.where(p > 0, p, 1.0)), 0.0)
    whole = float(terms.sum())
    if whole <= 0:
        rank = 1
    else:
        cumulative = torch.cumsum(terms, 0) / whole
        reached = torch.nonzero(cumulative >= eta - 1e-12)
        rank = int(reached[0]) + 1 if len(reached) else len(p)
    rank = max(1, rank)
    return min(rank, max_rank) if max_rank else rank


def safety_components(v: torch.Tensor, eta: float, max_rank: int) -> tuple[torch.Tensor, int]:
    """``P V = U_r Σ_r W_rᵀ`` in the compute dtype, and r (see :func:`entropy_rank`).

    The full spectrum (``torch.linalg.svdvals``) decides r; the top r triplets come from
    :func:`mergekit_safety.subspace.truncated_svd` (exact for small matrices, else randomized).
    """
    rank = entropy_rank(torch.linalg.svdvals(v), eta, max_rank)
    if rank == 0:
        return torch.zeros_like(v), 0
    u, s, wh = truncated_svd(v, rank)
    return (u * s) @ wh, rank


@merge_method(
    name="lssf",
    pretty_name="LSSF (low-rank safety subspace fusion)",
    reference_url="https://aclanthology.org/2025.acl-long.1479/",
    contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
)
def lssf_merge(
    group: TensorGroup,
    role: PerNonBase[RoleValue] = Role.FINETUNED,
    alpha: Alpha = LSSF_ALPHA,
    eta: Eta = LSSF_ETA,
    max_rank: Rank = LSSF_MAX_RANK,
) -> torch.Tensor:
    inputs = RoleInputs.from_group(group, role)
    if not inputs.gateable:
        return inputs.kept()
    components, rank = safety_components(inputs.alignment, eta, int(max_rank))
    if rank == 0:  # V = 0: alignment left this matrix alone
        return inputs.kept()
    if len(inputs.stored_finetuned) == 1:
        result = inputs.stored_finetuned[0].to(inputs.aligned.dtype, copy=True)
    else:
        result = inputs.aligned + inputs.update
    return inputs.cast_back(result.add_(components, alpha=alpha))


def decide(inputs: GateInputs, parameters: Mapping[str, Any]) -> Decision:
    """What ``inspect`` reports: every gateable matrix gets its safety components back."""
    if not inputs.gateable:
        return Decision(False, "not fused: 1-D, or has a vocabulary axis")
    alpha = parameters.get("alpha", LSSF_ALPHA)
    eta = parameters.get("eta", LSSF_ETA)
    cap = parameters.get("max_rank", LSSF_MAX_RANK)
    return Decision(True, f"theta_ft + {alpha:g} * P_r V, entropy share {eta:g}, rank cap {cap}")


lssf = RoleCheckedMethod(
    group=lssf_merge,
    decide=decide,
    rule=RoleRule("lssf", {Role.FINETUNED: (1, None), Role.UNALIGNED: (1, 1)}),
    gates=False,
    weighted=frozenset(),
)
