"""safe_lora against θ = θ_a + C Δ with C built explicitly."""

from __future__ import annotations

import pytest
import torch
from mergekit.merge_methods import merge_tensors
from reference import explicit_c, matrices, rho

ROLES = {"role": {"f": "finetuned", "u": "unaligned"}}


@pytest.mark.parametrize("shape", [(24, 16), (16, 24)])  # tall and wide: both product orders
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_projects_drifting_update(shape, dtype):
    aligned, unaligned, _, update = matrices(5, shape=shape, dtype=dtype)
    finetuned = (aligned.float() + update.float()).to(dtype)
    a, u, f = aligned.float(), unaligned.float(), finetuned.float()
    c = explicit_c(a, u)
    assert rho(f - a, c) <= 0.35
    got = merge_tensors(
        [aligned, finetuned, unaligned],
        "safe_lora",
        base_index=0,
        ids=["a", "f", "u"],
        parameters=ROLES,
    )
    expected = (a.double() + c @ (f - a).double()).to(dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_inclusive_threshold_and_keep_branch():
    aligned, unaligned, update, _ = matrices(6)
    c = explicit_c(aligned, unaligned)
    r = rho(update, c)
    finetuned = aligned + update
    at = merge_tensors(
        [aligned, finetuned, unaligned],
        "safe_lora",
        base_index=0,
        ids=["a", "f", "u"],
        parameters={**ROLES, "threshold": r + 1e-6},
    )
    torch.testing.assert_close(at, (aligned.double() + c @ update.double()).float())
    above = merge_tensors(
        [aligned, finetuned, unaligned],
        "safe_lora",
        base_index=0,
        ids=["a", "f", "u"],
        parameters={**ROLES, "threshold": r - 1e-3},
    )
    assert torch.equal(above, finetuned)


def test_zero_alignment_or_zero_update_keeps_finetuned():
    aligned, _, _, update = matrices(7)
    finetuned = aligned + update
    same = merge_tensors(
        [aligned, finetuned, aligned.clone()],
        "safe_lora",
        base_index=0,
        ids=["a", "f", "u"],
        parameters={**ROLES, "threshold": 1.0},
    )
    assert torch.equal(same, finetuned)  # V = 0: no subspace, nothing to project onto
    untouched = merge_tensors(
        [aligned, aligned.clone(), aligned - update],
        "safe_lora",
        base_index=0,
        ids=["a", "f", "u"],
        parameters={**ROLES, "threshold": 1.0},
    )
    assert torch.equal(untouched, aligned)  # Δ = 0


def test_fp64_inputs_stay_fp64():
    aligned, unaligned, _, update = (t.double() for t in matrices(8))
    got = merge_tensors(
        [aligned, aligned + update, unaligned],
        "safe_lora",
        base_index=0,
        ids=["a", "f", "u"],
        parameters=ROLES,
    )
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, aligned + explicit_c(aligned, unaligned) @ update)
