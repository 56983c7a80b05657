"""The low-rank path: same ρ, decisions and C Δ as the dense path; falls back when it must."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DEVICES
from reference import explicit_c, rho

from mergekit_safety.core import subspace
from mergekit_safety.core.subspace import (
    drifts,
    factorize,
    lowrank_score_and_project,
    rounding_tolerance,
    score,
    score_and_project,
    subspace_product,
)

SHAPES = [(192, 320), (320, 192), (256, 256)]  # wide, tall, square: low-rank up to rank 24


def family(shape, rank, seed, *, inside: bool, dtype=torch.float32):
    """V (full rank, its energy on 6 directions) and a rank-``rank`` Δ inside or outside them."""
    g = torch.Generator().manual_seed(seed)
    out, inp = shape
    basis = torch.linalg.qr(torch.randn(out, out, generator=g, dtype=torch.float64))[0]
    v = basis[:, :6] @ torch.randn(6, inp, generator=g, dtype=torch.float64) * 10
    v += torch.randn(out, inp, generator=g, dtype=torch.float64) * 0.1
    columns = basis[:, :6] if inside else basis[:, 6:]
    left = columns @ torch.randn(columns.shape[1], rank, generator=g, dtype=torch.float64)
    delta = left @ torch.randn(rank, inp, generator=g, dtype=torch.float64)
    return delta.to(dtype), v.to(dtype)


def dense(delta, v):
    """ρ and C Δ by the dense path, in fp64: the ground truth for fp32 comparisons."""
    d, w = delta.double(), v.double()
    product = subspace_product(d, w)
    r = float((product * d).sum() / (product.norm() * d.norm()))
    return r, product / w.norm()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [1, 5, 12])
@pytest.mark.parametrize("inside", [True, False])
def test_lowrank_matches_dense(device, shape, rank, inside):
    delta, v = (t.to(device) for t in family(shape, rank, seed=rank, inside=inside))
    factors = factorize(delta)
    assert factors is not None and rank <= factors.rank <= min(shape) // subspace.RANK_FRACTION
    assert factors.residual <= subspace.working_tolerance(delta)
    got, projected = score_and_project(delta, v)
    assert (got, projected.tolist()) == (
        lowrank_score_and_project(factors, v)[0],
        lowrank_score_and_project(factors, v)[1].tolist(),
    )  # score_and_project took the low-rank path
    expected, reference = dense(delta.cpu(), v.cpu())
    assert got == pytest.approx(expected, abs=1e-5)
    assert score(delta, v) == pytest.approx(got, abs=1e-7)
    scale = v.double().norm() * delta.double().norm()  # ≥ ‖C‖‖Δ‖: the forward-error scale
    assert float((projected.cpu().double() - reference).norm()) <= 1e-6 * float(scale)
    # both sides of τ: the same decision as the explicit-C reference, strict and inclusive
    assert (got > 0.5) == inside
    truth = rho(delta.cpu(), explicit_c(v.cpu(), torch.zeros_like(v.cpu())))
    for threshold in (0.35, 0.5, truth + 1e-3, truth - 1e-3):
        assert drifts(got, threshold) == drifts(truth, threshold)
        assert drifts(got, threshold, inclusive=True) == drifts(truth, threshold, inclusive=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
def test_full_rank_falls_back_to_dense(device, shape):
    g = torch.Generator().manual_seed(1)
    delta, v = (torch.randn(shape, generator=g).to(device) for _ in range(2))
    assert factorize(delta) is None
    got, projected = score_and_project(delta, v)
    product = subspace_product(delta, v)
    assert got == pytest.approx(subspace.cosine(product, delta), abs=1e-7)
    torch.testing.assert_close(projected, product / subspace.norm_of(v))


def test_rank_above_the_limit_falls_back():
    g = torch.Generator().manual_seed(2)
    left = torch.linalg.qr(torch.randn(128, 40, generator=g))[0]
    right = torch.linalg.qr(torch.randn(128, 40, generator=g))[0]
    delta, v = left @ right.T, torch.randn(128, 128, generator=g)  # flat spectrum, rank 40
    assert factorize(delta) is None  # limit: 128 / 4 = 32
    assert factorize(delta, max_rank=96) is not None
    assert score(delta, v) == pytest.approx(dense(delta, v)[0], abs=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_v_and_zero_delta(device):
    delta, v = (t.to(device) for t in family((192, 320), 4, seed=3, inside=True))
    zero = torch.zeros_like(delta)
    for d, w in ((delta, zero), (zero, v)):
        got, projected = score_and_project(d, w)
        assert math.isnan(got) and math.isnan(score(d, w))
        assert torch.count_nonzero(projected) == 0


def test_fp64_stays_fp64_and_agrees_to_fp64_precision():
    delta, v = family((320, 192), 6, seed=4, inside=False, dtype=torch.float64)
    factors = factorize(delta)
    assert factors is not None and factors.q.dtype == torch.float64
    got, projected = score_and_project(delta, v)
    expected, reference = dense(delta, v)
    assert projected.dtype == torch.float64
    assert got == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(projected, reference, rtol=1e-10, atol=1e-10 * reference.abs().max())


def test_deterministic():
    delta, v = family((256, 192), 7, seed=5, inside=True)
    first, second = score_and_project(delta, v), score_and_project(delta.clone(), v.clone())
    assert first[0] == second[0] and torch.equal(first[1], second[1])


def bf16_lora(seed: int, scale: float):
    """θ_a (bf16), θ_ft = bf16(θ_a + B A) with ‖BA‖ = scale·‖θ_a‖, V, and BA in fp32."""
    g = torch.Generator().manual_seed(seed)
    out, inp, rank = 128, 192, 4
    aligned = (torch.randn(out, inp, generator=g) * 0.02).bfloat16()
    v = torch.randn(out, 6, generator=g) @ torch.randn(6, inp, generator=g) * 1e-3
    update = torch.randn(out, rank, generator=g) @ torch.randn(rank, inp, generator=g)
    update *= scale * aligned.float().norm() / update.norm()
    finetuned = (aligned.float() + update).bfloat16()
    return aligned, finetuned, v, update


def test_bf16_checkpoint_needs_the_rounding_tolerance():
    """bf16(θ_a + BA) is full rank at fp32 precision: default → dense, bit-for-bit the same."""
    aligned, finetuned, v, update = bf16_lora(6, scale=0.05)
    delta = finetuned.float() - aligned.float()
    assert factorize(delta) is None
    product = subspace_product(delta, v)
    assert score(delta, v) == subspace.cosine(product, delta)

    tolerance = rounding_tolerance(aligned, torch.bfloat16)
    factors = factorize(delta, tolerance=tolerance)
    assert factors is not None and factors.rank <= 16 and factors.residual <= tolerance
    explicit = subspace.norm_of(delta - factors.q @ factors.w)  # accepted on ‖Δ‖² − ‖W‖² alone
    assert explicit == pytest.approx(factors.residual, rel=1e-3)
    lowrank, dense_rho = score(delta, v, tolerance=tolerance), dense(delta, v)[0]
    assert lowrank != score(delta, v)  # no longer the dense value...
    assert abs(lowrank - dense_rho) < 0.02  # ...but close to it


def test_rounding_tolerance_never_drops_most_of_the_update():
    """A sparse 1-ulp change is all at the rounding level: it must not become Δ = 0."""
    aligned, _, v, _ = bf16_lora(7, scale=0.0)
    g = torch.Generator().manual_seed(8)
    bumped = aligned.float().clone()
    mask = torch.rand(aligned.shape, generator=g) < 0.05
    bumped[mask] = torch.nextafter(aligned[mask], torch.full_like(aligned[mask], 1.0)).float()
    delta = bumped.bfloat16().float() - aligned.float()
    tolerance = rounding_tolerance(aligned, torch.bfloat16)
    assert subspace.norm_of(delta) < tolerance  # the whole Δ is below the rounding bound...
    assert factorize(delta, tolerance=tolerance) is None  # ...yet it is not discarded
    assert score(delta, v, tolerance=tolerance) == score(delta, v)


def test_methods_take_the_low_rank_path_on_a_bf16_lora(monkeypatch):
    """The kernels score within the checkpoint's rounding: a bf16 merged LoRA skips the dense
    GEMMs, and what they return still matches the explicit-C formula to bf16 precision."""
    from mergekit.merge_methods import TensorGroup, merge_tensors

    from mergekit_safety.core.roles import Role
    from mergekit_safety.methods.base import RoleInputs, gate

    aligned, finetuned, v, _ = bf16_lora(9, scale=0.05)
    unaligned = (aligned.float() - v).bfloat16()
    a, f, u = aligned.float(), finetuned.float(), unaligned.float()
    c = explicit_c(a, u)
    truth = rho(f - a, c)

    def no_dense(*args, **kwargs):
        raise AssertionError("the dense path ran")

    monkeypatch.setattr(subspace, "dense_score_and_project", no_dense)
    group = TensorGroup.from_tensors([aligned, finetuned, unaligned], ids="afu", base_index=0)
    roles = {"f": Role.FINETUNED, "u": Role.UNALIGNED}
    for threshold in (truth - 0.05, truth + 0.05):  # both sides of τ
        decision = gate(RoleInputs.from_group(group, roles), threshold)
        assert decision.rho == pytest.approx(truth, abs=1e-2)
        assert decision.merge == drifts(truth, threshold)
    got = merge_tensors(
        [aligned, finetuned, unaligned],
        "safe_lora",
        base_index=0,
        ids=["a", "f", "u"],
        parameters={"role": {"f": "finetuned", "u": "unaligned"}, "threshold": 1.0},
    )
    expected = (a.double() + c @ (f - a).double()).bfloat16()
    torch.testing.assert_close(got, expected, rtol=1.6e-2, atol=1e-5)


@pytest.mark.parametrize("rank", [5, 96])  # the low-rank path, and the dense one (rank > m/4)
def test_projection_only_when_wanted(rank):
    """safe_lora's kept matrices skip C Δ; a merged one gets exactly score_and_project's."""
    delta, v = family((256, 256), rank, seed=11, inside=False)
    rho, projected = score_and_project(delta, v)
    seen = []
    got = subspace.score_and_project_if(delta, v, lambda r: seen.append(r) or False)
    assert got == (rho, None) and seen == [rho]
    got_rho, got_projected = subspace.score_and_project_if(delta, v, lambda r: True)
    assert got_rho == rho and torch.equal(got_projected, projected)
    zero = subspace.score_and_project_if(torch.zeros_like(delta), v, lambda r: True)[1]
    assert zero is not None and not zero.any()  # undefined ρ: C Δ is zero, if asked
