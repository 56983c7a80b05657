"""mergekit_safety.recipe.walk: one walk over mergekit's three layouts, on the config and the
mapping."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from mergekit.config import MergeConfiguration

from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.selection import drop_selection, set_gate, with_threshold
from mergekit_safety.recipe import walk as recipes

MODELS: dict[str, Any] = {
    "merge_method": "safe_linear",
    "base_model": "aligned",
    "parameters": {"top_k": 3, "allow_extrapolation": False},
    "models": [
        {"model": "aligned"},
        {"model": "chat", "parameters": {"weight": 0.7}},
        {"model": "pre", "parameters": {"role": "Unaligned"}},
    ],
}
SLICES: dict[str, Any] = {
    "merge_method": "safe_linear",
    "base_model": "aligned",
    "parameters": {"fraction": 0.5, "role": "finetuned"},
    "slices": [
        {
            "sources": [
                {"model": "aligned", "layer_range": [0, 2]},
                {"model": "chat", "layer_range": [0, 2]},
                {"model": "pre", "layer_range": [0, 2], "parameters": {"role": "unaligned"}},
            ],
            "parameters": {"weight": 0.4},
        },
        {
            "sources": [
                {"model": "chat", "layer_range": [2, 4]},
                {"model": "aligned", "layer_range": [2, 4]},
            ],
            "base_model": "chat",
        },
    ],
}
MODULES: dict[str, Any] = {
    "merge_method": "safe_linear",
    "base_model": "aligned",
    "modules": {
        "text": {
            "models": [
                {"model": "aligned"},
                {"model": "chat"},
                {"model": "pre", "parameters": {"role": "unaligned"}},
            ],
            "parameters": {"weight": 0.2},
        },
        "vision": {
            "slices": [
                {
                    "sources": [
                        {"model": "aligned", "layer_range": [0, 1]},
                        {"model": "chat+lora", "layer_range": [0, 1]},
                    ]
                }
            ],
            "parameters": {"role": "safe"},
        },
    },
}
LAYOUTS = {"models": MODELS, "slices": SLICES, "modules": MODULES}


def forms(data: dict[str, Any]) -> list[Any]:
    """The recipe as its YAML mapping and as mergekit's validated configuration."""
    return [copy.deepcopy(data), MergeConfiguration.model_validate(data)]


def both(layout: str) -> list[Any]:
    return forms(LAYOUTS[layout])


@pytest.mark.parametrize("form", [0, 1], ids=["mapping", "config"])
def test_walk_visits_every_scope_in_each_layout(form):
    kinds = {
        "models": ["recipe", "model", "model", "model"],
        "slices": ["recipe", "slice", "source", "source", "source", "slice", "source", "source"],
        "modules": ["recipe", "module", "model", "model", "model", "module", "slice", "source",
                    "source"],
    }  # fmt: skip
    labels = {
        "models": ["", "aligned", "chat", "pre"],
        "slices": ["", "slice 0", "aligned", "chat", "pre", "slice 1", "chat", "aligned"],
        "modules": ["", "module text", "aligned", "chat", "pre", "module vision", "slice 0",
                    "aligned", "chat"],
    }  # fmt: skip
    for layout in LAYOUTS:
        scopes = recipes.walk(both(layout)[form])
        assert [s.kind for s in scopes] == kinds[layout]
        assert [s.label for s in scopes] == labels[layout]
        assert [label for label, _p in recipes.parameter_scopes(both(layout)[form])] == labels[
            layout
        ][1:]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inputs_and_roles_are_the_same_on_the_mapping_and_the_config(layout):
    mapping, config = both(layout)
    assert [str(s.reference) for s in recipes.inputs(mapping)] == [
        str(s.reference) for s in recipes.inputs(config)
    ]
    as_text = [
        [(str(s.reference), role) for s, role in recipes.roles(form)] for form in (mapping, config)
    ]
    assert as_text[0] == as_text[1]


def test_roles_per_layout_skip_the_base_in_effect_and_inherit_enclosing_roles():
    def roles(data):
        return [(str(s.reference), role) for s, role in recipes.roles(data)]

    assert roles(MODELS) == [("chat", "finetuned"), ("pre", "unaligned")]
    # slice 1 names its own base_model: there the aligned model is an input, chat the base
    assert roles(SLICES) == [
        ("chat", "finetuned"), ("pre", "unaligned"), ("aligned", "finetuned")
    ]  # fmt: skip
    # the vision module's `role: safe` reaches its sources
    assert roles(MODULES) == [("chat", "finetuned"), ("pre", "unaligned"), ("chat+lora", "safe")]


def test_a_role_that_is_not_a_string_is_a_config_error():
    data = copy.deepcopy(MODELS)
    data["models"][1]["parameters"]["role"] = 1
    with pytest.raises(ConfigError, match="role of chat must be a plain string"):
        recipes.roles(data)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", [0, 1], ids=["mapping", "config"])
def test_get_and_set_a_parameter_per_finetuned_input(layout, form):
    recipe = both(layout)[form]
    before = copy.deepcopy(recipe)
    out = recipes.set_parameter(recipe, "weight", 0.9, "finetuned")
    finetuned = [role for _s, role in recipes.roles(out)].count("finetuned")
    assert recipes.get_parameter(out, "weight", "finetuned") == [0.9] * finetuned
    unaligned = [s for s, role in recipes.roles(out) if role != "finetuned"]
    assert all(s.parameters.get("weight") is None for s in unaligned)
    assert recipe == before  # a copy: the original is untouched


def test_a_finetuned_value_reads_through_to_the_enclosing_scope():
    assert recipes.get_parameter(SLICES, "weight", "finetuned") == [0.4, None]
    assert recipes.get_parameter(MODULES, "weight", "finetuned") == [0.2]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", [0, 1], ids=["mapping", "config"])
def test_set_a_global_parameter(layout, form):
    recipe = both(layout)[form]
    out = recipes.set_parameter(recipe, "density", 0.3)
    assert recipes.get_parameter(out, "density") == 0.3
    assert recipes.get_parameter(recipe, "density") is None
    out = recipes.set_parameter(out, "top_k", 2)
    assert recipes.get_parameter(out, "top_k") == 2
    assert recipes.get_parameter(out, "fraction") is None  # the alternatives are dropped
    out = recipes.set_parameter(out, "threshold", 0.4)
    assert recipes.get_parameter(out, "top_k") is None
    assert recipes.get_parameter(out, "threshold") == 0.4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_resolve_selection_writes_threshold_last_and_keeps_the_rest(layout):
    mapping, config = both(layout)
    out = recipes.resolve_selection(mapping, 0.25)
    kept = [k for k in (LAYOUTS[layout].get("parameters") or {}) if k not in ("top_k", "fraction")]
    assert list(out["parameters"]) == [*kept, "threshold"]
    assert out["parameters"]["threshold"] == 0.25
    assert list(out) == list(mapping) + ([] if "parameters" in mapping else ["parameters"])
    assert mapping == LAYOUTS[layout]
    same = recipes.resolve_selection(config, 0.25, copy=False)
    assert same is config and config.parameters == out["parameters"]
    assert MergeConfiguration.model_validate(out) == config


@pytest.mark.parametrize("layout", LAYOUTS)
def test_without_selection_copies_the_config(layout):
    config = MergeConfiguration.model_validate(LAYOUTS[layout])
    kept = recipes.without_selection(config, drop_threshold=False)
    assert "top_k" not in kept.parameters and "fraction" not in kept.parameters
    assert kept is not config and config.parameters == LAYOUTS[layout].get("parameters")
    with_tau = recipes.resolve_selection(config, 0.5)
    assert "threshold" in recipes.without_selection(with_tau, drop_threshold=False).parameters
    assert "threshold" not in recipes.without_selection(with_tau, drop_threshold=True).parameters


def test_the_parameter_rewrites():
    parameters = {"threshold": 0.1, "weight": 1.0, "fraction": 0.2}
    assert list(set_gate(parameters, "top_k", 3).items()) == [("weight", 1.0), ("top_k", 3)]
    assert with_threshold({"top_k": 3, "role": "x"}, 0.4) == {"role": "x", "threshold": 0.4}
    assert drop_selection(parameters, drop_threshold=False) == {"threshold": 0.1, "weight": 1.0}
    assert drop_selection(parameters, drop_threshold=True) == {"weight": 1.0}
