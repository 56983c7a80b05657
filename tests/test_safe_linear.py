"""safe_linear against θ = θ_a + Σ λᵢ Δᵢ computed by hand, plain and gated."""

from __future__ import annotations

import pytest
import torch
from mergekit.merge_methods import merge_state_dicts, merge_tensors
from mergekit.merge_methods.base import TensorBatch
from reference import explicit_c, matrices, rho

from mergekit_safety.methods.safe_linear import SAFE_LINEAR_WEIGHT as DEFAULT_WEIGHT
from mergekit_safety.methods.safe_linear import safe_linear_batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plain_interpolation_matches_formula(dtype):
    aligned, _, update, _ = matrices(0, dtype=dtype)
    finetuned = (aligned.float() + update.float()).to(dtype)
    got = merge_tensors([aligned, finetuned], "safe_linear", base_index=0)
    a, f = aligned.float(), finetuned.float()
    expected = (a + DEFAULT_WEIGHT * (f - a)).to(dtype)
    assert got.dtype == dtype
    # (1 − λ)·θ_a + λ·θ_ft and θ_a + λ·Δ round differently in fp32; bf16 allows one ulp.
    torch.testing.assert_close(
        got.float(),
        expected.float(),
        rtol=1e-2 * (dtype != torch.float32),
        atol=1e-5 if dtype == torch.float32 else 1e-2,
    )


def test_several_finetunes_each_with_its_weight():
    aligned, _, update_a, update_b = matrices(1)
    inputs = [aligned, aligned + update_a, aligned + update_b]
    got = merge_tensors(
        inputs,
        "safe_linear",
        base_index=0,
        ids=["a", "x", "y"],
        parameters={"weight": {"x": 0.3, "y": 0.9}},
    )
    torch.testing.assert_close(got, aligned + 0.3 * update_a + 0.9 * update_b)


def test_gate_merges_only_matrices_below_threshold():
    aligned, unaligned, update_in, update_out = matrices(2)
    c = explicit_c(aligned, unaligned)
    rho_in, rho_out = rho(update_in, c), rho(update_out, c)
    assert rho_out < 0.35 < rho_in  # the fixture puts the two updates on both sides of τ
    for update, drifted in ((update_in, False), (update_out, True)):
        finetuned = aligned + update
        got = merge_tensors(
            [aligned, finetuned, unaligned],
            "safe_linear",
            base_index=0,
            ids=["a", "f", "u"],
            parameters={"role": {"f": "finetuned", "u": "unaligned"}, "weight": 0.5},
        )
        expected = aligned + 0.5 * update if drifted else finetuned
        torch.testing.assert_close(got, expected)


def test_threshold_decides_on_both_sides_of_rho():
    aligned, unaligned, update_in, _ = matrices(3)
    r = rho(update_in, explicit_c(aligned, unaligned))
    finetuned = aligned + update_in
    for threshold, merged in ((r + 1e-3, True), (r - 1e-3, False)):
        got = merge_tensors(
            [aligned, finetuned, unaligned],
            "safe_linear",
            base_index=0,
            ids=["a", "f", "u"],
            parameters={"role": {"u": "unaligned", "f": "finetuned"}, "threshold": threshold},
        )
        expected = aligned + DEFAULT_WEIGHT * update_in if merged else finetuned
        torch.testing.assert_close(got, expected)


def test_gated_merge_keeps_1d_tensors_finetuned_and_batches_plain_state_dicts():
    aligned, unaligned, _, update = matrices(4)
    models = {
        "a": {"w": aligned, "norm": aligned[0]},
        "f": {"w": aligned + update, "norm": aligned[0] + 1},
        "u": {"w": unaligned, "norm": aligned[0] - 1},
    }
    gated = merge_state_dicts(
        models,
        "safe_linear",
        base="a",
        parameters={"role": {"f": "finetuned", "u": "unaligned"}, "weight": 0.5},
    )
    torch.testing.assert_close(gated["norm"], aligned[0] + 1)  # 1-D: never gated
    torch.testing.assert_close(gated["w"], aligned + 0.5 * update)
    plain = merge_state_dicts({k: models[k] for k in "af"}, "safe_linear", base="a")
    torch.testing.assert_close(plain["norm"], aligned[0] + DEFAULT_WEIGHT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weights", [[0.7, 0.7], [0.2, 0.9]], ids=["one-lambda", "per-tensor"])
def test_batch_kernel_matches_formula_with_one_or_several_lambdas(dtype, weights):
    """A packed batch of two tensors: one λ takes the lerp path, differing λ the general one."""
    aligned = torch.stack([matrices(i, dtype=dtype)[0] for i in (5, 6)])
    finetuned = (aligned.float() + torch.stack([matrices(i)[2] for i in (5, 6)])).to(dtype)
    weight = torch.tensor(weights).reshape(2, 1)
    got = safe_linear_batch.merge_batch(TensorBatch((aligned, finetuned), 0), weight=weight)
    a, f = aligned.double(), finetuned.double()
    expected = a + weight.double().reshape(2, 1, 1) * (f - a)
    assert got.dtype == dtype
    # The exact result rounded once to bf16 is within half an ulp; allow one.
    torch.testing.assert_close(
        got.double(),
        expected,
        rtol=2**-7 if dtype == torch.bfloat16 else 1e-6,
        atol=1e-6,
    )
