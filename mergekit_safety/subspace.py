"""Alignment-subspace math shared by every gated method (Safe LoRA, arXiv 2405.16833).

Per weight matrix: ``V = W_aligned - W_unaligned``, ``C = V Vᵀ / ‖V‖_F`` and the score
``ρ = cos(vec(C Δ), vec(Δ))`` of a fine-tuning update ``Δ``. ``C`` itself is never built: ``C Δ`` is
``V (Vᵀ Δ)`` or ``(V Vᵀ) Δ``, whichever Gram matrix is smaller, so the only intermediate is
``min(out, in)²`` — never larger than the weight, and never vocabulary-sized. Everything runs in
fp32 (fp64 for fp64 inputs) on the device of the inputs, so mergekit's ``--cuda`` applies.
"""

from __future__ import annotations

import math

import torch


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """fp64 for fp64 inputs, fp32 otherwise: the precision mergekit's own methods use."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def subspace_product(delta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Return ``V Vᵀ Δ`` (``C Δ`` times ``‖V‖_F``) with the cheaper product order."""
    out_features, in_features = v.shape
    if out_features <= in_features:
        return (v @ v.T) @ delta
    return v @ (v.T @ delta)


def project(delta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``C Δ`` with ``C = V Vᵀ / ‖V‖_F``; zero when ``V`` is zero (an empty subspace)."""
    norm = torch.linalg.vector_norm(v)
    if norm == 0:
        return torch.zeros_like(delta)
    return subspace_product(delta, v) / norm


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two tensors flattened; NaN when either is zero."""
    denominator = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    if denominator == 0:
        return math.nan
    return float(torch.sum(a * b) / denominator)


def score(delta: torch.Tensor, v: torch.Tensor) -> float:
    """ρ = cos(C Δ, Δ). NaN when ``V`` or ``Δ`` is zero: there is nothing to measure.

    An update orthogonal to a non-empty subspace (``C Δ = 0``) scores 0: it left it entirely.
    """
    return _rho(subspace_product(delta, v), delta, v)


def _rho(product: torch.Tensor, delta: torch.Tensor, v: torch.Tensor) -> float:
    if not (torch.any(v != 0) and torch.any(delta != 0)):
        return math.nan
    rho = cosine(product, delta)
    return 0.0 if math.isnan(rho) else rho


def score_and_project(delta: torch.Tensor, v: torch.Tensor) -> tuple[float, torch.Tensor]:
    """ρ and ``C Δ`` from one product, for methods that need both."""
    product = subspace_product(delta, v)
    norm = torch.linalg.vector_norm(v)
    projected = product / norm if norm != 0 else torch.zeros_like(delta)
    return _rho(product, delta, v), projected


def drifts(rho: float, threshold: float, *, inclusive: bool = False) -> bool:
    """Whether an update left the alignment subspace: ``ρ < τ`` (``ρ ≤ τ`` if inclusive).

    An undefined score (``V = 0`` or ``Δ = 0``) never counts as drift: alignment did not shape
    that matrix, or fine-tuning did not touch it, so the fine-tuned weights stand.
    """
    if math.isnan(rho):
        return False
    return rho <= threshold if inclusive else rho < threshold
