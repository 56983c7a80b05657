"""A method describes itself, once: every registered method is reachable from ``inspect``, the
sweep grid, ``adapter``, the CLI's help and the docs, without any of them naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import write_recipe
from mergekit.merge_methods import get

from mergekit_safety.adapter.plan import adapter_methods, no_adapter_form, plan_adapter
from mergekit_safety.cli import main
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.roles import Role
from mergekit_safety.methods import METHODS, register_all
from mergekit_safety.recipe.inspection import inspect
from mergekit_safety.tuning.grid import plan_grid

REPO = Path(__file__).resolve().parent.parent
NAMES = [method.spec.name for method in METHODS]


def recipe_of(method, family: dict[str, Path], calibration: Path) -> dict:
    """The smallest recipe the method's own role rule accepts, on the tiny family."""
    stand_in = {
        Role.FINETUNED: family["finetuned"],
        Role.UNALIGNED: family["unaligned"],
        Role.SAFE: family["safe"],
        Role.HARMFUL: family["safe"],  # any model of the family does for a harm direction
    }
    models = []
    for role, (low, _high) in method.rule.counts.items():
        for _ in range(low):
            models.append({"model": str(stand_in[role]), "parameters": {"role": role.value}})
    recipe = {
        "merge_method": method.spec.name,
        "base_model": str(family["aligned"]),
        "models": models,
        "dtype": "float32",
    }
    if method.needs_calibration:
        recipe["parameters"] = {"calibration": str(calibration)}
    return recipe


@pytest.mark.parametrize("method", METHODS, ids=NAMES)
def test_each_method_describes_itself(method):
    register_all()
    assert get(method.spec.name) is method
    assert callable(method.decide)
    assert method.adapter_form is not None or method.adapter, "an adapter form, or why not"
    specs = {p.name for p in method.spec.parameters}
    assert {"role", "top_k", "fraction"} <= specs
    for role in method.default_weights:
        assert role in method.weighted


def test_every_method_is_in_inspect_sweep_and_adapter_help():
    for command, names in (
        ("inspect", NAMES),
        ("sweep", NAMES),
        ("adapter", [m.spec.name for m in METHODS if m.adapter_form is not None]),
    ):
        result = CliRunner().invoke(main, [command, "--help"], terminal_width=400)
        assert result.exit_code == 0, result.output
        (line,) = [line for line in result.output.splitlines() if line.startswith("Methods:")]
        for name in NAMES:
            assert (name in line) == (name in names), (command, name)


def test_adapter_lists_derive_from_the_registry():
    assert set(adapter_methods()) | set(no_adapter_form()) == set(NAMES)
    assert not set(adapter_methods()) & set(no_adapter_form())


def test_a_stock_recipe_is_refused_naming_every_method(tmp_path, family):
    recipe = write_recipe(
        tmp_path / "stock.yml",
        {
            "merge_method": "linear",
            "models": [
                {"model": str(family["finetuned"]), "parameters": {"weight": 0.5}},
                {"model": str(family["aligned"]), "parameters": {"weight": 0.5}},
            ],
            "dtype": "float32",
        },
    )
    for attempt in (
        lambda: inspect(recipe, quiet=True),
        lambda: plan_grid(recipe, [("weight", [0.5])]),
    ):
        with pytest.raises(ConfigError) as caught:
            attempt()
        for name in NAMES:
            assert name in str(caught.value), (name, str(caught.value))


@pytest.mark.parametrize("method", METHODS, ids=NAMES)
def test_inspect_and_adapter_reach_every_method(method, tmp_path, family, calibration):
    recipe = write_recipe(tmp_path / "r.yml", recipe_of(method, family, calibration))
    found = inspect(recipe, quiet=True)
    assert found.method == method.spec.name and found.records
    with pytest.raises(ConfigError) as caught:  # full models in: no exact adapter either way
        plan_adapter(str(recipe))
    message = str(caught.value)
    if method.adapter_form is None:
        assert method.adapter in message
    else:
        assert "has no adapter form" not in message and "adapter merges" not in message


@pytest.mark.parametrize("method", METHODS, ids=NAMES)
def test_every_method_is_in_the_docs(method):
    faithfulness = (REPO / "docs" / "faithfulness.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"## {method.spec.name}\n" in faithfulness
    assert f"`{method.spec.name}`" in readme
