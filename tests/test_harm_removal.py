"""harm_removal against θ = θ_ft − λ·trim(θ_harmful − θ_a) by hand: API and mergekit-yaml."""

from __future__ import annotations

import pytest
import torch
from helpers import REPO, one_line, perturbed, write_recipe, yaml_in_process
from mergekit.merge_methods import merge_state_dicts, merge_tensors
from safetensors.torch import load_file

from mergekit_safety.core.errors import ConfigError
from mergekit_safety.methods.harm_removal import HARM_REMOVAL_DENSITY as DEFAULT_DENSITY
from mergekit_safety.methods.harm_removal import HARM_REMOVAL_SCALE as DEFAULT_SCALE


def reference(aligned, finetuned, harmful, scale: float, density: float) -> torch.Tensor:
    """Sort |τ_H| by hand and keep the ⌊density·n⌋ largest (at least one)."""
    tau = harmful.double() - aligned.double()
    keep = max(1, int(density * tau.numel()))
    order = tau.abs().flatten().argsort(descending=True)[:keep]
    mask = torch.zeros(tau.numel(), dtype=torch.bool)
    mask[order] = True
    return finetuned.double() - scale * tau * mask.view_as(tau)


def triple(seed: int, shape=(40, 24), dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    aligned = torch.randn(shape, generator=generator)
    finetuned = aligned + 0.05 * torch.randn(shape, generator=generator)
    harmful = aligned + 0.05 * torch.randn(shape, generator=generator)
    return aligned.to(dtype), finetuned.to(dtype), harmful.to(dtype)


API = {"role": {"h": "harmful"}}


@pytest.mark.parametrize(("scale", "density"), [(3.0, 0.1), (1.0, 1.0), (0.5, 0.37), (-1.0, 0.5)])
def test_api_matches_dense_reference(scale, density):
    a, f, h = triple(int(scale * 10) + 5)
    opt_in = {"allow_extrapolation": True} if scale < 0 else {}  # adds H: asked for (#27)
    parameters = {**API, "scale": scale, "density": density, **opt_in}
    got = merge_tensors([a, f, h], "harm_removal", base_index=0, ids=["a", "f", "h"],
                        parameters=parameters)  # fmt: skip
    torch.testing.assert_close(
        got.double(), reference(a, f, h, scale, density), atol=1e-6, rtol=1e-6
    )
    kept = (got - f).ne(0).sum().item()
    assert kept == max(1, int(density * a.numel()))  # exactly the top share moved


def test_defaults_bf16_output_and_1d_tensors_edited_too():
    a, f, h = triple(11, dtype=torch.bfloat16)
    models = {
        "a": {"w": a, "norm": a[0]},
        "f": {"w": f, "norm": f[0]},
        "h": {"w": h, "norm": h[0] + 1},
    }
    out = merge_state_dicts(models, "harm_removal", base="a", parameters=API)
    assert out["w"].dtype == torch.bfloat16
    expected = reference(a.float(), f.float(), h.float(), DEFAULT_SCALE, DEFAULT_DENSITY)
    differ = (out["w"].float() - expected.float().to(torch.bfloat16).float()).abs() > 1e-2
    tau = (h.float() - a.float()).abs()
    cut = tau.flatten().sort(descending=True).values[int(DEFAULT_DENSITY * tau.numel()) - 1]
    assert torch.all(tau[differ] == cut)  # only bf16 ties at the cut may be split otherwise
    assert not torch.equal(out["norm"], f[0])  # the reference edits every tensor


def test_several_finetunes_act_as_their_summed_update():
    a, f, h = triple(12)
    _, g, _ = triple(13)
    g = a + (g - triple(13)[0])
    got = merge_tensors([a, f, g, h], "harm_removal", base_index=0, ids=["a", "f", "g", "h"],
                        parameters={**API, "scale": 2.0, "density": 1.0})  # fmt: skip
    torch.testing.assert_close(got, a + (f - a) + (g - a) - 2.0 * (h - a), atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def harmful(family, tmp_path_factory):
    return perturbed(
        family["aligned"], tmp_path_factory.mktemp("harm") / "harmful", seed=9, scale=0.05
    )


def harm_recipe(family, harmful, **parameters) -> dict:
    return {
        "merge_method": "harm_removal",
        "base_model": str(family["aligned"]),
        "models": [
            {"model": str(family["finetuned"])},
            {"model": str(harmful), "parameters": {"role": "harmful"}},
        ],
        "parameters": parameters,
        "dtype": "float32",
    }


def test_mergekit_yaml_matches_dense_reference(tmp_path, family, harmful):
    out = tmp_path / "out"
    recipe = harm_recipe(family, harmful, scale=1.5, density=0.2)
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out)
    assert result.returncode == 0, result.stderr[-2000:]
    merged = load_file(out / "model.safetensors")
    a = load_file(family["aligned"] / "model.safetensors")
    f = load_file(family["finetuned"] / "model.safetensors")
    h = load_file(harmful / "model.safetensors")
    changed = 0
    for name, tensor in merged.items():
        expected = reference(a[name], f[name], h[name], 1.5, 0.2).float()
        torch.testing.assert_close(tensor, expected, atol=1e-6, rtol=1e-6, msg=name)
        changed += not torch.equal(tensor, f[name])
    assert changed > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no harmful", "harm_removal needs a model with role 'harmful'"),
        ("unaligned", "harm_removal takes no model with role 'unaligned'"),
        ({"density": 0}, "parameter 'density': Input should be greater than 0 (got 0)"),
        (
            {"density": 1.5},
            "parameter 'density': Input should be less than or equal to 1 (got 1.5)",
        ),
        (
            {"scale": float("inf")},
            "parameter 'scale': Input should be a finite number (got 'Infinity')",
        ),
    ],
)
def test_mistakes_give_one_line_before_any_tensor_loads(tmp_path, family, harmful, change, message):
    recipe = harm_recipe(family, harmful)
    if change == "no harmful":
        recipe["models"][1]["parameters"] = {"role": "finetuned"}
    elif change == "unaligned":
        recipe["models"].append(
            {"model": str(family["unaligned"]), "parameters": {"role": "unaligned"}}
        )
    else:
        recipe["parameters"] = change
    out = tmp_path / "out"
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out)
    assert message in one_line(result)
    assert "Executing graph" not in result.stderr
    assert not out.exists()


def test_shipped_recipe_runs(tmp_path):
    out = tmp_path / "harm_removal"
    result = yaml_in_process(REPO / "recipes" / "harm_removal.yml", out, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model.safetensors").exists()


def test_sweep_sets_scale_and_density_on_the_recipe():
    from mergekit_safety.tuning.grid import parse_assignment, plan_grid, set_parameter

    assert parse_assignment("scale=0.5,1,3,5") == ("scale", [0.5, 1.0, 3.0, 5.0])
    recipe = REPO / "recipes" / "harm_removal.yml"
    plan = plan_grid(recipe, [("scale", [1.0, 3.0]), ("density", [0.1, 1.0])])
    assert plan.parameters == ("scale", "density")
    point = set_parameter(set_parameter(plan.recipe, "scale", 1.0), "density", 1.0)
    assert point["parameters"] == {"scale": 1.0, "density": 1.0}


def test_a_negative_scale_needs_the_opt_in():
    a, f, h = triple(3)
    with pytest.raises(ConfigError, match="below 0: that adds the harm direction"):
        merge_tensors([a, f, h], "harm_removal", base_index=0, ids=["a", "f", "h"],
                      parameters={**API, "scale": -1.0})  # fmt: skip
