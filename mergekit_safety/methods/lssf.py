"""LSSF, low-rank safety subspace fusion (Zhou et al., ACL 2025 Long Papers, pp. 30621–30638;
arXiv 2602.00038): add back the part of the alignment update that lies in a low-rank safety
subspace.

Per 2-D weight without a vocabulary axis, with V = θ_aligned − θ_unaligned (the paper's safety
vector):

* the safety subspace's basis ``U`` and spectrum ``σ``: with ``calibration: DIR`` (the aligned
  model's input statistics XᵀX, ``mergekit-safety calibrate``), the paper's: the left singular
  vectors and values of the aligned layer's outputs on the calibration data, ``Z = W_a Xᵀ``
  (taken from ``W_a (XᵀX) W_aᵀ``; a layer without statistics keeps θ_ft). Without it, the
  data-free stand-in SafeTune uses: the SVD of V itself;
* the safety-critical rank ``r``: with ``p_i = σ_i² / Σ_j σ_j²`` and the entropy terms
  ``h_i = −p_i log p_i``, the smallest ``r`` whose cumulative entropy ``Σ_{i≤r} h_i`` reaches
  the share ``eta`` of the whole spectrum's ``Σ_i h_i`` (the safety singular value entropy),
  capped at ``max_rank`` (0: no cap);
* the (weighted) projector ``P = U_r diag(a_i²) U_rᵀ`` with ``a_i = 1 + (top_weight − 1)
  (σ_i − σ_r) / (σ_1 − σ_r)`` (``top_weight`` = 1: the plain projector ``U_r U_rᵀ``), and the
  fusion θ = θ_ft + α · P V. Without calibration and at ``top_weight`` 1, P V is the rank-r
  truncation of V.

Everything else (1-D tensors, embeddings, ``lm_head``) keeps θ_ft. Several fine-tunes act as
one: θ_ft = θ_aligned + ΣΔᵢ.

No reference code was published (SafeTune's module says so, and none could be found), and only
the paper's abstract could be read offline. The rest follows two second-hand readings that agree
on it: SafeTune's (Lexsi-Labs/SafeTune commit 87deac3, ``src/safetune/interventions/recover/
lssf.py``: Eqs. 1, 4–7, 10–11 and 13) and a digest of the ACL PDF. The defaults (η = 0.85, cap 8,
α = 1, ``top_weight`` 1, data-free) are SafeTune's ``LSSFTrainer`` defaults; the paper has no cap
by both readings (``max_rank: 0``). See ``docs/faithfulness.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from mergekit.merge_methods.base import BasePolicy, InputContract, PerNonBase, TensorGroup
from mergekit.merge_methods.easy_define import merge_method

from mergekit_safety.core import calibration as calibration_files
from mergekit_safety.core.parameters import Alpha, Eta, Rank, TopWeight
from mergekit_safety.core.roles import Role, RoleRule, RoleValue
from mergekit_safety.core.subspace import truncated_svd
from mergekit_safety.methods.base import Decision, GateInputs, RoleCheckedMethod, RoleInputs

LSSF_ALPHA = 1.0
"""The coefficient α on the safety components P_r V."""
LSSF_ETA = 0.85
"""The entropy share η: the rank keeps this share of the singular value entropy."""
LSSF_MAX_RANK = 8
"""The cap on the safety-critical rank (0: no cap)."""
LSSF_TOP_WEIGHT = 1.0
"""The weight a_1 on the leading safety direction (1: the plain projector)."""


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


def activation_basis(weight: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Left singular vectors and values (descending, fp64) of ``Z = W Xᵀ``, the layer's outputs
    on the calibration data, from ``G ∝ XᵀX``: those of ``W G^½``.

    ``Z Zᵀ = W G Wᵀ``: its eigenvectors when W has no more rows than columns, else the SVD of
    ``W Q Λ^½`` (``G = Q Λ Qᵀ``), whichever decomposes the smaller matrix. The scale of G
    changes neither the vectors nor the rank the entropy picks.
    """
    w, g = weight.double(), hessian.double()
    g = (g + g.T) / 2
    rows, columns = w.shape
    if rows <= columns:
        m = w @ g @ w.T
        values, vectors = torch.linalg.eigh((m + m.T) / 2)
        return vectors.flip(1), values.flip(0).clamp_min(0).sqrt()
    values, vectors = torch.linalg.eigh(g)
    u, s, _ = torch.linalg.svd((w @ vectors) * values.clamp_min(0).sqrt(), full_matrices=False)
    return u, s


def projector_weights(s: torch.Tensor, rank: int, top_weight: float) -> torch.Tensor:
    """``a_i²`` for the first ``rank`` directions: ``a_i = 1 + (top_weight − 1)(σ_i − σ_r) /
    (σ_1 − σ_r)`` (Eqs. 10–11 as SafeTune reads them); all 1 at rank 1 or a flat spectrum."""
    s = s[:rank].double()
    span = s[0] - s[-1]
    if top_weight == 1 or rank == 1 or span <= 0:
        return torch.ones_like(s)
    return (1 + (top_weight - 1) * (s - s[-1]) / span).square()


def safety_components(
    v: torch.Tensor,
    eta: float,
    max_rank: int,
    top_weight: float = LSSF_TOP_WEIGHT,
    basis: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """``P V`` in V's dtype, and r (see :func:`entropy_rank`).

    ``basis`` (``U``, ``σ``) from :func:`activation_basis`; without it, V's own SVD: the full
    spectrum (``torch.linalg.svdvals``) decides r, and the top r triplets come from
    :func:`mergekit_safety.core.subspace.truncated_svd` (exact for small matrices, else randomized).
    """
    if basis is None:
        rank = entropy_rank(torch.linalg.svdvals(v), eta, max_rank)
        if rank == 0:
            return torch.zeros_like(v), 0
        u, s, wh = truncated_svd(v, rank)
        weights = projector_weights(s, rank, top_weight).to(s.dtype)
        return (u * (s * weights)) @ wh, rank
    u, s = basis
    rank = entropy_rank(s, eta, max_rank)
    if rank == 0:
        return torch.zeros_like(v), 0
    ur = u[:, :rank].to(v.dtype)
    weights = projector_weights(s, rank, top_weight).to(v.dtype)
    return (ur * weights) @ (ur.T @ v), rank


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
    top_weight: TopWeight = LSSF_TOP_WEIGHT,
    calibration: str | None = None,
) -> torch.Tensor:
    inputs = RoleInputs.from_group(group, role)
    if not inputs.gateable:
        return inputs.kept()
    basis = None
    if calibration is not None:
        stats = calibration_files.read(calibration)
        hessian = stats.hessian(group.metadata.name or "", inputs.aligned.device)
        if hessian is None:  # not a calibrated linear layer: no activation subspace
            return inputs.kept()
        basis = activation_basis(inputs.aligned, hessian)
    components, rank = safety_components(inputs.alignment, eta, int(max_rank), top_weight, basis)
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
    top = parameters.get("top_weight", LSSF_TOP_WEIGHT)
    source = "calibration activations" if parameters.get("calibration") else "SVD of V"
    return Decision(
        True,
        f"theta_ft + {alpha:g} * P_r V, subspace from the {source}, entropy share {eta:g}, "
        f"{f'rank cap {cap}' if cap else 'no rank cap'}, top weight {top:g}",
    )


def changes(name: str, shape: tuple[int, ...], vocabulary: bool, parameters: Mapping) -> bool:
    """What the kernel fuses: 2-D weights without a vocabulary axis (with calibration, those
    with statistics); the rest keep the fine-tuned model's values."""
    if len(shape) != 2 or vocabulary:
        return False
    where = parameters.get("calibration")
    modules = calibration_files.read(where).modules if where is not None else None
    return modules is None or calibration_files.module_of(name) in modules


lssf = RoleCheckedMethod(
    group=lssf_merge,
    decide=decide,
    changes=changes,
    rule=RoleRule("lssf", {Role.FINETUNED: (1, None), Role.UNALIGNED: (1, 1)}),
    gates=False,
    weighted=frozenset(),
    adapter="it adds α·SVD_r(V) to every linear module, not only the adapter's: an exact adapter "
    "is [s·B, α·U_r·Σ_r]·[A; W_rᵀ] on all of them, which this version does not write",
)
