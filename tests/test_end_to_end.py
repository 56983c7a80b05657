"""Every method through the real ``mergekit-yaml`` command, output loaded by transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import REPO, mergekit_yaml, recipe_for, write_recipe
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from mergekit_safety.core.subspace import drifts, project, score


def weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(path / "model.safetensors").items()}


def expected_tensor(method: str, name: str, w: dict, threshold: float) -> torch.Tensor:
    """The method's equation, tensor by tensor, from the saved inputs."""
    a, f = w["aligned"][name], w["finetuned"][name]
    gateable = a.ndim == 2 and "embed" not in name and "lm_head" not in name
    if method == "safe_linear" and "unaligned" not in w:
        return a + 0.7 * (f - a)
    v = w["aligned"][name] - w["unaligned"][name]
    merge = gateable and drifts(score(f - a, v), threshold, inclusive=method == "safe_lora")
    if not merge:
        return f
    if method == "safe_linear":
        return a + 0.7 * (f - a)
    if method == "safemerge":
        return a + 0.8 * (f - a) + 0.2 * (w["safe"][name] - a)
    return a + project(f - a, v)


CASES = [
    ("safe_linear", ()),
    ("safe_linear", ("unaligned",)),
    ("safemerge", ("unaligned", "safe")),
    ("safe_lora", ("unaligned",)),
]


@pytest.mark.parametrize(("method", "roles"), CASES)
def test_mergekit_yaml_runs_each_method(tmp_path, family, method, roles):
    # A threshold between the tiny models' ρ values, so both branches of the gate are exercised.
    threshold = 0.68
    gate = {"threshold": threshold} if "unaligned" in roles else {}  # ungated: none read (#27)
    recipe = write_recipe(tmp_path / "r.yml", recipe_for(method, family, roles, **gate))
    result = mergekit_yaml(recipe, tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    merged = {k: v.float() for k, v in model.state_dict().items()}
    inputs = {role: weights(family[role]) for role in ("aligned", "finetuned", *roles)}
    decisions = set()
    for name, tensor in merged.items():
        expected = expected_tensor(method, name, inputs, threshold)
        torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6, msg=name)
        decisions.add(torch.equal(expected, inputs["finetuned"][name]))
    assert decisions == {True, False} or method == "safe_linear" and not roles


def test_repository_recipes_run_as_is(tmp_path):
    """The shipped recipes run from the repo root on the committed demo models."""
    recipes = sorted((REPO / "recipes").glob("*.yml"))
    assert {r.stem for r in recipes} >= {
        "safe_linear",
        "safe_linear_gated",
        "safemerge",
        "safe_lora",
        "resta",
    }
    for recipe in recipes:
        out = tmp_path / recipe.stem
        cache = str(tmp_path / "lora-cache")  # adapter_*.yml merge their LoRA on load
        result = mergekit_yaml(recipe, out, "--lora-merge-cache", cache, cwd=REPO)
        assert result.returncode == 0, f"{recipe.name}: {result.stderr[-2000:]}"
        model = AutoModelForCausalLM.from_pretrained(out)
        assert model.config.model_type == "llama"


def test_lora_adapter_input(tmp_path, family):
    """`aligned+adapter` (mergekit applies the LoRA on load) gated by safe_lora."""
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(family["aligned"], dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    recipe = recipe_for("safe_lora", family, ("unaligned",), threshold=1.0)
    recipe["models"][0]["model"] = f"{family['aligned']}+{tmp_path / 'adapter'}"
    result = mergekit_yaml(
        write_recipe(tmp_path / "r.yml", recipe),
        tmp_path / "out",
        "--lora-merge-cache",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr[-2000:]

    fresh = AutoModelForCausalLM.from_pretrained(family["aligned"], dtype=torch.float32)
    finetuned = PeftModel.from_pretrained(fresh, tmp_path / "adapter").merge_and_unload()
    merged = weights(tmp_path / "out")
    w = {
        "aligned": weights(family["aligned"]),
        "unaligned": weights(family["unaligned"]),
        "finetuned": {k: v.float() for k, v in finetuned.state_dict().items()},
    }
    touched = 0
    for name, tensor in merged.items():
        expected = expected_tensor("safe_lora", name, w, threshold=1.0)
        torch.testing.assert_close(tensor, expected, rtol=1e-4, atol=1e-5, msg=name)
        touched += not torch.equal(w["finetuned"][name], w["aligned"][name])
    assert touched == 4  # q_proj and v_proj in both layers carry the adapter's update
