"""safemerge against θ = θ_a + w_ft Δ + w_safe (θ_safe − θ_a) on drifting matrices only."""

from __future__ import annotations

import pytest
import torch
from mergekit.merge_methods import merge_tensors
from reference import explicit_c, matrices, rho

IDS = ["a", "f", "u", "s"]
ROLES = {"f": "finetuned", "u": "unaligned", "s": "safe"}


def run(aligned, finetuned, unaligned, safe, **parameters):
    return merge_tensors(
        [aligned, finetuned, unaligned, safe],
        "safemerge",
        base_index=0,
        ids=IDS,
        parameters={"role": ROLES, **parameters},
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_weights_on_drifting_matrix(dtype):
    aligned, unaligned, safe_update, update = matrices(9, dtype=dtype)
    a, u = aligned.float(), unaligned.float()
    f, s = a + update.float(), a + safe_update.float()
    assert rho(f - a, explicit_c(a, u)) < 0.35
    got = run(aligned, f.to(dtype), unaligned, s.to(dtype))
    fb, sb = f.to(dtype).float(), s.to(dtype).float()
    expected = (a + 0.8 * (fb - a) + 0.2 * (sb - a)).to(dtype)
    # fp32: torch's default tolerance (rounding order may differ); bf16: one bf16 step
    tolerance = {} if dtype == torch.float32 else {"rtol": 0, "atol": 1e-2}
    torch.testing.assert_close(got, expected, **tolerance)


def test_matrix_inside_subspace_keeps_finetuned_and_weights_apply():
    aligned, unaligned, update_in, update_out = matrices(10)
    safe = aligned + 0.01
    kept = run(aligned, aligned + update_in, unaligned, safe)
    assert torch.equal(kept, aligned + update_in)
    merged = run(
        aligned, aligned + update_out, unaligned, safe, weight={"f": 0.6, "s": 0.4, "u": None}
    )
    torch.testing.assert_close(merged, aligned + 0.6 * update_out + 0.4 * 0.01)


def test_dare_is_seeded_and_rescaled():
    aligned, unaligned, _, update = matrices(11, shape=(64, 48))
    safe = aligned + 0.05
    args = (aligned, aligned + update, unaligned, safe)
    first = run(*args, merge_type="dare_linear", density=0.5)
    again = run(*args, merge_type="dare_linear", density=0.5)
    other = run(*args, merge_type="dare_linear", density=0.5, seed=1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Dropped entries are exactly zero in the update; kept ones are rescaled by 1/density.
    residual = first - aligned
    plain = 0.8 * update + 0.2 * 0.05
    assert not torch.allclose(residual, plain)
    torch.testing.assert_close(residual.mean(), plain.mean(), atol=0.02, rtol=0)
