"""The subspace math against explicit-C references: ρ, C Δ, the zero cases, precision, devices."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DEVICES
from reference import explicit_c, matrices, rho

from mergekit_safety.core import subspace
from mergekit_safety.core.subspace import (
    compute_dtype,
    cosine,
    drifts,
    norm_of,
    project,
    score,
    score_and_project,
    subspace_product,
)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(24, 16), (16, 24), (200, 96), (96, 200)])
def test_score_and_projection_match_explicit_c(device, shape):
    aligned, unaligned, inside, outside = matrices(0, shape=shape)
    c = explicit_c(aligned, unaligned)
    v = (aligned - unaligned).to(device)
    for update in (inside, inside + outside, outside):
        expected = rho(update, c)
        got, projected = score_and_project(update.to(device), v)
        # Exactly orthogonal: C Δ is fp32 rounding noise, whose cosine with Δ is noise too.
        assert got == pytest.approx(expected, abs=1e-5 if update is not outside else 0.1)
        assert score(update.to(device), v) == pytest.approx(got, abs=1e-6)
        reference = c @ update.double()
        torch.testing.assert_close(projected.cpu().double(), reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(project(update.to(device), v), projected)
        assert projected.device.type == torch.device(device).type


@pytest.mark.parametrize("shape", [(24, 16), (16, 24)])
def test_subspace_product_is_v_vt_delta(shape):
    aligned, unaligned, update, _ = matrices(1, shape=shape, dtype=torch.float64)
    v = aligned - unaligned
    torch.testing.assert_close(subspace_product(update, v), v @ v.T @ update)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_subspace_or_zero_update_is_undefined(device):
    aligned, unaligned, update, _ = (t.to(device) for t in matrices(2, shape=(128, 96)))
    zero = torch.zeros_like(update)
    for delta, v in ((update, zero), (zero, aligned - unaligned), (zero, zero)):
        rho_, projected = score_and_project(delta, v)
        assert math.isnan(rho_) and math.isnan(score(delta, v))
        assert torch.count_nonzero(projected) == 0
        assert not drifts(rho_, 1.0) and not drifts(rho_, 1.0, inclusive=True)


def test_tiny_but_nonzero_update_is_not_zero():
    """Squares that underflow fp32 must not make a nonzero Δ count as Δ = 0."""
    aligned, unaligned, update, _ = matrices(3, shape=(24, 16))
    tiny = update * 1e-30
    assert norm_of(tiny) >= 0
    assert score(tiny, aligned - unaligned) == pytest.approx(
        score(update, aligned - unaligned), abs=1e-4
    )


def test_orthogonal_update_scores_zero():
    basis = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(4)))[0]
    v = basis[:, :4] @ torch.randn(4, 20)
    delta = basis[:, 4:] @ torch.randn(28, 20)
    v = v - basis[:, 4:] @ (basis[:, 4:].T @ v)  # exactly orthogonal in fp32, as far as it goes
    assert score(delta, v) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_fp64_in_fp64_out_and_bf16_computed_in_fp32(device):
    aligned, unaligned, update, _ = (t.to(device) for t in matrices(5, dtype=torch.float64))
    rho64, projected = score_and_project(update, aligned - unaligned)
    assert projected.dtype == torch.float64
    assert rho64 == pytest.approx(rho(update, explicit_c(aligned, unaligned)), abs=1e-12)
    low = score_and_project(update.bfloat16(), (aligned - unaligned).bfloat16())[1]
    assert low.dtype == torch.float32
    assert compute_dtype(update.bfloat16()) == torch.float32


def test_norm_and_cosine_are_accurate_on_large_tensors():
    """torch's one-pass fp32 norm drifts by ~1e-4 on 10⁶+ entries; ρ must not."""
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(1024, 1500, generator=generator) * 1e3 + 5
    y = x + torch.randn(x.shape, generator=generator)
    assert norm_of(x) == pytest.approx(float(x.double().norm()), rel=1e-7)
    exact = float((x.double() * y.double()).sum() / (x.double().norm() * y.double().norm()))
    assert cosine(x, y) == pytest.approx(exact, abs=1e-7)
    assert norm_of(torch.arange(5.0)) == pytest.approx(math.sqrt(30))
    assert math.isnan(cosine(torch.zeros(3), torch.ones(3)))


def test_drifts_thresholds():
    assert drifts(0.2, 0.35) and not drifts(0.35, 0.35) and drifts(0.35, 0.35, inclusive=True)
    assert not drifts(math.nan, 0.35)


@pytest.mark.parametrize("shape", [(60_000, 64), (64, 60_000)])
def test_vocabulary_sized_shapes_stay_bounded(shape):
    """An explicit out×out (or in×in) here would be 14 GB: both paths must stay weight-sized."""
    generator = torch.Generator().manual_seed(7)
    v = torch.randn(shape, generator=generator)
    full = torch.randn(shape, generator=generator)
    low = torch.randn(shape[0], 2, generator=generator) @ torch.randn(2, shape[1])
    for delta in (full, low):
        r = score(delta, v)
        assert 0 <= r <= 1
    assert subspace.factorize(low) is not None and subspace.factorize(full) is None
