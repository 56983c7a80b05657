"""top_k / fraction: the tensors an explicit τ from inspect picks, via mergekit-yaml and the API."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import REPO, cli_in_process, recipe_for, write_recipe, yaml_in_process
from safetensors.torch import load_file

from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.selection import Selection, cut_threshold, parse_selection, resolve
from mergekit_safety.recipe.inspection import inspect

# --- the rule ------------------------------------------------------------------------------------


def test_resolve_picks_the_lowest_and_a_threshold_between():
    scores = {"c": 0.5, "a": 0.1, "b": 0.3, "nan": math.nan, "none": None, "d": 0.9}
    resolved = resolve(Selection(top_k=2), scores)
    assert [name for name, _ in resolved.chosen] == ["a", "b"]
    assert resolved.available == 4 and resolved.next_rho == 0.5
    assert 0.3 < resolved.threshold < 0.5
    assert resolved.threshold == 0.4  # the shortest decimal in the middle half of the gap
    everything = resolve(Selection(top_k=4), scores)
    assert 0.9 < everything.threshold <= 1.0 and everything.next_rho is None


def test_fraction_rounds_up_to_at_least_the_fraction():
    assert Selection(fraction=0.25).count(28) == 7
    assert Selection(fraction=0.3).count(10) == 3  # 0.3 * 10 is 3.0000000000000004 in floats
    assert Selection(fraction=0.01).count(28) == 1
    assert Selection(fraction=1.0).count(28) == 28


def test_ties_at_the_cut_are_an_error_naming_the_way_out():
    scores = {"a": 0.1, "b": 0.2, "c": 0.2, "d": 0.2, "e": 0.7}
    with pytest.raises(ConfigError, match=r"equal rho 0\.2 \(b, c\).*use top_k=1 or top_k=4"):
        resolve(Selection(top_k=2), scores)
    assert [n for n, _ in resolve(Selection(top_k=4), scores).chosen] == ["a", "b", "c", "d"]


def test_cut_threshold_is_strictly_inside():
    for below, above in [(0.1, 0.2), (0.123456, 0.123457), (0.99, None), (1.0, None), (0, 1e-12)]:
        t = cut_threshold(below, above)
        assert below < t and (above is None or t < above)


@pytest.mark.parametrize(
    "top_k, fraction, threshold, message",
    [
        (3, 0.5, False, "not both"),
        (0, None, False, "at least 1"),
        (-2, None, False, "at least 1"),
        (2.5, None, False, "whole number"),
        (None, 0.0, False, r"\(0, 1\]"),
        (None, 1.5, False, r"\(0, 1\]"),
        (3, None, True, "remove `threshold`"),
    ],
)
def test_bad_selections(top_k, fraction, threshold, message):
    with pytest.raises(ConfigError, match=message):
        parse_selection(top_k, fraction, threshold_set=threshold)


# --- through mergekit-yaml and inspect -----------------------------------------------------------


def changed(out: Path, finetuned: Path) -> set[str]:
    merged, original = (
        load_file(out / "model.safetensors"),
        load_file(finetuned / "model.safetensors"),
    )
    return {name for name in merged if not torch.equal(merged[name], original[name])}


def same_weights(a: Path, b: Path) -> None:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


run_cli = cli_in_process


@pytest.mark.parametrize(
    "method, roles, selection",
    [
        ("safe_lora", ("unaligned",), {"top_k": 3}),
        ("safemerge", ("unaligned", "safe"), {"fraction": 0.5}),
    ],
)
def test_mergekit_yaml_selection_equals_explicit_threshold(
    tmp_path, family, method, roles, selection
):
    recipe = write_recipe(tmp_path / "r.yml", recipe_for(method, family, roles, **selection))
    result = yaml_in_process(recipe, tmp_path / "selected")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mergekit-safety: " in result.stderr and "ranked matrices" in result.stderr

    key, value = next(iter(selection.items()))
    option = "--top-k" if key == "top_k" else "--fraction"
    plain = write_recipe(tmp_path / "p.yml", recipe_for(method, family, roles))
    written = tmp_path / "explicit.yml"
    cli = run_cli("inspect", str(plain), option, str(value), "--write-recipe", str(written),
                  "--plot", "rho.png", "--json", "--quiet", cwd=tmp_path)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "rho.png").stat().st_size > 5000
    text = written.read_text()
    assert "top_k" not in text.split("merge_method")[1] and "threshold:" in text
    rows = [row for row in json.loads(cli.stdout) if row["gated"]]
    expected = sorted(r["rho"] for r in rows)[
        : (value if key == "top_k" else math.ceil(value * len(rows)))
    ]
    chosen = {r["tensor"] for r in rows if r["merge"]}
    assert sorted(r["rho"] for r in rows if r["merge"]) == expected
    for name in chosen:
        assert f"#   {name}  rho" in text

    assert yaml_in_process(written, tmp_path / "explicit").returncode == 0
    same_weights(tmp_path / "selected", tmp_path / "explicit")
    assert changed(tmp_path / "selected", family["finetuned"]) == chosen


def test_demo_fraction_through_mergekit_yaml(tmp_path):
    """The committed demo models (bf16, LoRA fine-tune): fraction = explicit τ from inspect."""
    recipe = tmp_path / "gated.yml"
    text = (REPO / "recipes" / "safe_linear_gated.yml").read_text()
    recipe.write_text(text.replace("threshold: 0.35", "fraction: 0.25"))
    found = inspect(recipe, quiet=True)
    assert found.resolved is not None and len(found.resolved.chosen) == 7  # ⌈0.25 · 28⌉
    explicit = tmp_path / "explicit.yml"
    explicit.write_text(text.replace("threshold: 0.35", f"threshold: {found.resolved.threshold!r}"))
    assert yaml_in_process(recipe, tmp_path / "a", cwd=REPO).returncode == 0
    assert yaml_in_process(explicit, tmp_path / "b", cwd=REPO).returncode == 0
    same_weights(tmp_path / "a", tmp_path / "b")
    finetuned = REPO / "recipes" / "demo" / "finetuned"
    assert changed(tmp_path / "a", finetuned) == {name for name, _ in found.resolved.chosen}


# --- the Python API ------------------------------------------------------------------------------


def state_dicts(family, roles):
    return {
        role: load_file(family[role] / "model.safetensors")
        for role in ("aligned", "finetuned", *roles)
    }


@pytest.mark.parametrize("method", ["safe_linear", "safe_lora"])
def test_api_selection_equals_explicit_threshold(family, method):
    from mergekit.merge_methods import merge_state_dicts

    models = state_dicts(family, ("unaligned",))
    roles = {"role": {"finetuned": "finetuned", "unaligned": "unaligned"}}
    merged = merge_state_dicts(models, method, base="aligned", parameters={**roles, "top_k": 3})
    plain = write_recipe(Path(family["aligned"]).parent / f"api-{method}.yml",
                         recipe_for(method, family, ("unaligned",)))  # fmt: skip
    found = inspect(plain, quiet=True, selection=Selection(top_k=3))
    explicit = merge_state_dicts(
        models, method, base="aligned", parameters={**roles, "threshold": found.resolved.threshold}
    )
    for name in merged:
        assert torch.equal(merged[name], explicit[name]), name
    moved = {n for n in merged if not torch.equal(merged[n], models["finetuned"][n])}
    assert moved == {name for name, _ in found.resolved.chosen}


def test_api_bad_selections(family):
    from mergekit.merge_methods import merge_state_dicts

    roles = {"role": {"finetuned": "finetuned", "unaligned": "unaligned"}}
    models = state_dicts(family, ("unaligned",))
    with pytest.raises(ConfigError, match="remove `threshold`"):
        merge_state_dicts(models, "safe_lora", base="aligned",
                          parameters={**roles, "top_k": 2, "threshold": 0.3})  # fmt: skip
    with pytest.raises(ConfigError, match="only 14 matrices can be ranked"):
        merge_state_dicts(models, "safe_lora", base="aligned", parameters={**roles, "top_k": 99})
    ungated = {k: v for k, v in models.items() if k != "unaligned"}
    with pytest.raises(ConfigError, match="needs a model with role 'unaligned'"):
        merge_state_dicts(ungated, "safe_linear", base="aligned", parameters={"fraction": 0.5})


# --- bad selections through mergekit-yaml: one line, nothing written -----------------------------


BAD_IN_RECIPES = [
    ("safe_lora", ("unaligned",), {"top_k": 15}, "top_k=15 but only 14 matrices can be ranked"),
    ("safe_linear", ("unaligned",), {"top_k": 2, "threshold": 0.3}, "remove `threshold`"),
    ("safe_linear", (), {"top_k": 2}, "needs a model with role 'unaligned'"),
    ("safe_lora", ("unaligned",), {"fraction": 1.5}, "fraction must lie in (0, 1]"),
    ("safemerge", ("unaligned", "safe"), {"fraction": 0}, "fraction must lie in (0, 1]"),
    ("safe_lora", ("unaligned",), {"top_k": 0}, "top_k must be at least 1"),
    ("safe_lora", ("unaligned",), {"top_k": 2, "fraction": 0.5}, "not both"),
]


@pytest.mark.parametrize("method, roles, parameters, message", BAD_IN_RECIPES)
def test_inspect_rejects_bad_selection_in_recipes(
    tmp_path, family, method, roles, parameters, message
):
    recipe = write_recipe(tmp_path / "r.yml", recipe_for(method, family, roles, **parameters))
    with pytest.raises(ConfigError, match=re.escape(message)):
        inspect(recipe, quiet=True)


@pytest.mark.parametrize("method, roles, parameters, message", BAD_IN_RECIPES[:4])
def test_mergekit_yaml_bad_selection_is_one_line(
    tmp_path, family, method, roles, parameters, message
):
    recipe = write_recipe(tmp_path / "r.yml", recipe_for(method, family, roles, **parameters))
    result = yaml_in_process(recipe, tmp_path / "out")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("mergekit-safety:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Executing graph" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_inspect_cli_bad_selection(tmp_path, family):
    recipe = write_recipe(tmp_path / "r.yml", recipe_for("safe_lora", family, ("unaligned",)))
    result = run_cli(
        "inspect", str(recipe), "--top-k", "40", "--write-recipe", "w.yml", cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: top_k=40 but only 14")
    assert not (tmp_path / "w.yml").exists()


def test_module_and_layer_for_the_rho_plot():
    from mergekit_safety.publish.plot import module_and_layer

    assert module_and_layer("model.layers.3.self_attn.q_proj.weight") == ("self_attn.q_proj", 3)
    assert module_and_layer("transformer.h.11.mlp.c_fc.weight") == ("mlp.c_fc", 11)
    assert module_and_layer("lm_head.weight") == ("lm_head", None)
