"""Dense references written straight from the papers' equations, with C built explicitly."""

from __future__ import annotations

import torch


def explicit_c(aligned: torch.Tensor, unaligned: torch.Tensor) -> torch.Tensor:
    """C = V Vᵀ / ‖V‖_F, materialised (fine at test sizes)."""
    v = (aligned - unaligned).double()
    return v @ v.T / torch.linalg.norm(v)


def rho(delta: torch.Tensor, c: torch.Tensor) -> float:
    """cos(vec(C Δ), vec(Δ))."""
    delta = delta.double()
    projected = c @ delta
    return float((projected * delta).sum() / (projected.norm() * delta.norm()))


def matrices(seed: int, shape=(24, 16), dtype=torch.float32):
    """aligned, unaligned (V of rank 3), and two updates: one inside span(V), one outside it."""
    g = torch.Generator().manual_seed(seed)
    out, inp = shape
    aligned = torch.randn(shape, generator=g)
    basis = torch.linalg.qr(torch.randn(out, out, generator=g))[0]
    inside, outside = basis[:, :3], basis[:, 3:]
    v = inside @ torch.randn(3, inp, generator=g)
    unaligned = aligned - v
    update_in = inside @ torch.randn(3, inp, generator=g) * 0.1
    update_out = outside @ torch.randn(out - 3, inp, generator=g) * 0.1
    return tuple(t.to(dtype) for t in (aligned, unaligned, update_in, update_out))
