"""The truncated SVD (LoX): accuracy against torch.linalg.svd on matrices of known spectrum, both
paths (exact and randomized), and determinism."""

from __future__ import annotations

import pytest
import torch

from mergekit_safety.core import subspace
from mergekit_safety.core.subspace import low_rank_approximation, truncated_svd


def known(rows: int, cols: int, singular: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q₁ diag(σ) Q₂ᵀ with random orthonormal Q₁, Q₂: the singular values are ``singular``."""
    generator = torch.Generator().manual_seed(seed)
    r = singular.numel()
    q1 = torch.linalg.qr(torch.randn(rows, r, generator=generator, dtype=torch.float64)).Q
    q2 = torch.linalg.qr(torch.randn(cols, r, generator=generator, dtype=torch.float64)).Q
    return (q1 * singular.double()) @ q2.T


@pytest.mark.parametrize(("rows", "cols"), [(64, 40), (600, 400), (400, 600)])
def test_singular_values_and_best_approximation(rows, cols):
    smallest = min(rows, cols)
    singular = 10.0 * 0.8 ** torch.arange(smallest, dtype=torch.float64)  # decaying, distinct
    matrix = known(rows, cols, singular).float()
    k = 6
    u, s, vh = truncated_svd(matrix, k)
    assert u.shape == (rows, k) and s.shape == (k,) and vh.shape == (k, cols)
    torch.testing.assert_close(s.double(), singular[:k], rtol=1e-4, atol=1e-5)
    uu, ss, vvh = torch.linalg.svd(matrix, full_matrices=False)
    best = (uu[:, :k] * ss[:k]) @ vvh[:k]
    torch.testing.assert_close(low_rank_approximation(matrix, k), best, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(u.T @ u, torch.eye(k), atol=1e-5, rtol=0)


def test_randomized_path_is_taken_and_matches_exact(monkeypatch):
    matrix = known(700, 500, 5.0 * 0.7 ** torch.arange(500, dtype=torch.float64)).float()
    calls = []
    real_svd = torch.linalg.svd
    monkeypatch.setattr(
        torch.linalg, "svd", lambda m, **kw: calls.append(m.shape) or real_svd(m, **kw)
    )
    u, s, vh = truncated_svd(matrix, 8)
    assert calls == [(18, 500)]  # only the small Qᵀ M: the sketch, not the full matrix
    monkeypatch.setattr(subspace, "EXACT_SVD_DIM", 10_000)
    exact = truncated_svd(matrix, 8)
    torch.testing.assert_close((u * s) @ vh, (exact[0] * exact[1]) @ exact[2], rtol=1e-4, atol=1e-5)


def test_exact_rank_matrix_is_reproduced_and_k0_is_everything():
    matrix = known(300, 280, torch.tensor([4.0, 2.0, 1.0])).float()
    torch.testing.assert_close(low_rank_approximation(matrix, 3), matrix, atol=1e-5, rtol=0)
    assert torch.equal(low_rank_approximation(matrix, 0), matrix)
    assert truncated_svd(matrix, 10_000)[1].numel() == 280  # k is clipped to min(out, in)


def test_deterministic_across_calls_and_fp64():
    matrix = torch.randn(640, 320, generator=torch.Generator().manual_seed(3))
    first = low_rank_approximation(matrix, 5)
    torch.manual_seed(123)  # the global generator must not matter
    assert torch.equal(first, low_rank_approximation(matrix, 5))
    assert low_rank_approximation(matrix.double(), 5).dtype == torch.float64
