"""lox against θ = θ_a + α·SVD_k(θ_a − θ_u) computed by hand: Python API and mergekit-yaml."""

from __future__ import annotations

import pytest
import torch
from helpers import REPO, one_line, write_recipe, yaml_in_process
from mergekit.merge_methods import merge_state_dicts, merge_tensors
from safetensors.torch import load_file


def reference(aligned: torch.Tensor, unaligned: torch.Tensor, k: int, alpha: float):
    """The dense reference: full SVD, top k kept (the reference code's ``S[k:] = 0``)."""
    v = aligned.double() - unaligned.double()
    if k == 0:
        return aligned.double() + alpha * v
    u, s, vh = torch.linalg.svd(v, full_matrices=False)
    s[k:] = 0
    return aligned.double() + alpha * (u * s) @ vh


def pair(seed: int, shape=(48, 32), dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    unaligned = torch.randn(shape, generator=generator)
    aligned = unaligned + 0.1 * torch.randn(shape, generator=generator)
    return aligned.to(dtype), unaligned.to(dtype)


API = {"role": {"u": "unaligned"}}


@pytest.mark.parametrize(("k", "alpha"), [(0, 1.0), (3, 0.5), (1, 2.0), (32, 1.0)])
def test_api_matches_dense_reference(k, alpha):
    aligned, unaligned = pair(k)
    got = merge_tensors(
        [aligned, unaligned], "lox", base_index=0, ids=["a", "u"],
        parameters={**API, "k": k, "alpha": alpha},
    )  # fmt: skip
    torch.testing.assert_close(
        got.double(), reference(aligned, unaligned, k, alpha), atol=1e-5, rtol=1e-5
    )
    if k and k < 32:  # a truncation really drops something: the full update differs
        assert not torch.allclose(got.double(), reference(aligned, unaligned, 0, alpha), atol=1e-3)


def test_output_in_input_dtype_and_1d_stays_aligned():
    aligned, unaligned = pair(7, dtype=torch.bfloat16)
    models = {
        "a": {"w": aligned, "norm": aligned[0]},
        "u": {"w": unaligned, "norm": aligned[0] - 1},
    }
    out = merge_state_dicts(models, "lox", base="a", parameters={**API, "k": 2, "alpha": 1.0})
    assert out["w"].dtype == torch.bfloat16
    assert torch.equal(out["norm"], aligned[0])
    expected = reference(aligned.float(), unaligned.float(), 2, 1.0).to(torch.bfloat16)
    torch.testing.assert_close(out["w"].float(), expected.float(), atol=2e-2, rtol=1e-2)


def test_fp64_computes_in_fp64():
    aligned, unaligned = pair(8, dtype=torch.float64)
    got = merge_tensors([aligned, unaligned], "lox", base_index=0, ids=["a", "u"],
                        parameters={**API, "k": 4, "alpha": 1.5})  # fmt: skip
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference(aligned, unaligned, 4, 1.5), atol=1e-12, rtol=1e-12)


def lox_recipe(family, **parameters) -> dict:
    return {
        "merge_method": "lox",
        "base_model": str(family["aligned"]),
        "models": [{"model": str(family["unaligned"]), "parameters": {"role": "unaligned"}}],
        "parameters": parameters,
        "dtype": "float32",
    }


def test_mergekit_yaml_matches_dense_reference(tmp_path, family):
    out = tmp_path / "out"
    result = yaml_in_process(
        write_recipe(tmp_path / "r.yml", lox_recipe(family, k=3, alpha=0.8)), out
    )
    assert result.returncode == 0, result.stderr[-2000:]
    merged = load_file(out / "model.safetensors")
    a = load_file(family["aligned"] / "model.safetensors")
    u = load_file(family["unaligned"] / "model.safetensors")
    changed = 0
    for name, tensor in merged.items():
        if a[name].ndim < 2:
            assert torch.equal(tensor, a[name]), name
            continue
        expected = reference(a[name].float(), u[name].float(), 3, 0.8).float()
        torch.testing.assert_close(tensor, expected, atol=1e-5, rtol=1e-5, msg=name)
        changed += not torch.equal(tensor, a[name])
    assert changed > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": "finetuned"}, "lox takes no model with role 'finetuned'"),
        ({"k": -1}, "parameter 'k': Input should be greater than or equal to 0 (got -1)"),
        (
            {"alpha": -0.5},
            "parameter 'alpha': Input should be greater than or equal to 0 (got -0.5)",
        ),
        ({"alpha": "abc"}, "parameter 'alpha'"),
    ],
)
def test_mistakes_give_one_line_before_any_tensor_loads(tmp_path, family, change, message):
    recipe = lox_recipe(family)
    if "role" in change:
        recipe["models"][0]["parameters"] = change
    else:
        recipe["parameters"] = change
    out = tmp_path / "out"
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out)
    assert message in one_line(result)
    assert "Executing graph" not in result.stderr  # planning stopped it, not a tensor task
    assert not out.exists()


def test_alpha_past_the_range_warns(tmp_path, family):
    out = tmp_path / "out"
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", lox_recipe(family, alpha=3.0)), out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "alpha 3 is past 2" in result.stderr


def test_shipped_recipe_runs(tmp_path):
    out = tmp_path / "lox"
    result = yaml_in_process(REPO / "recipes" / "lox.yml", out, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model.safetensors").exists()
