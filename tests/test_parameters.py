"""Parameter domains as the kernels' pydantic types: one line through the API and the planner."""

from __future__ import annotations

import ast
import re

import pytest
import torch
from helpers import one_line, recipe_for, write_recipe, yaml_in_process
from mergekit.merge_methods import merge_tensors
from mergekit.sparsify import magnitude

from mergekit_safety.core import parameters
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.parameters import DEFAULT_THRESHOLD
from mergekit_safety.methods import METHODS
from mergekit_safety.methods.harm_removal import trim

ROLES = {
    "safe_linear": {"u": "unaligned"},
    "safe_lora": {"u": "unaligned"},
    "safemerge": {"u": "unaligned", "s": "safe"},
    "harm_removal": {"h": "harmful"},
    "lox": {"u": "unaligned"},
}


def api_merge(method: str, **values):
    """``method`` through ``merge_tensors`` on random 8×8 inputs, ``values`` as its parameters."""
    generator = torch.Generator().manual_seed(0)
    roles = ROLES[method]
    ids = ["a", *([] if method == "lox" else ["f"]), *roles]
    tensors = [torch.randn(8, 8, generator=generator) for _ in ids]
    return merge_tensors(
        tensors, method, base_index=0, ids=ids, parameters={"role": roles, **values}
    )


@pytest.mark.parametrize(
    ("method", "values", "message"),
    [
        (
            "safemerge",
            {"merge_type": "dare_linear", "density": 0},
            "parameter 'density': Input should be greater than 0 (got 0)",
        ),
        (
            "harm_removal",
            {"density": 1.5},
            "parameter 'density': Input should be less than or equal to 1 (got 1.5)",
        ),
        (
            "safe_lora",
            {"threshold": 1.2},
            "parameter 'threshold': Input should be less than or equal to 1 (got 1.2)",
        ),
        (
            "safe_linear",
            {"threshold": True},
            "parameter 'threshold': Input should be a number, not a boolean (got True)",
        ),
        (
            "safe_linear",
            {"weight": {"f": float("inf")}},
            "parameter 'weight' of f: Input should be a finite number (got inf)",
        ),
        (
            "safemerge",
            {"weight": {"f": False}},
            "parameter 'weight' of f: Input should be a number, not a boolean (got False)",
        ),
        (
            "harm_removal",
            {"scale": float("nan")},
            "parameter 'scale': Input should be a finite number (got nan)",
        ),
        ("lox", {"k": -1}, "parameter 'k': Input should be greater than or equal to 0 (got -1)"),
        (
            "lox",
            {"k": 2.5},
            "parameter 'k': Input should be a valid integer, "
            "got a number with a fractional part (got 2.5)",
        ),
        (
            "lox",
            {"alpha": -0.5},
            "parameter 'alpha': Input should be greater than or equal to 0 (got -0.5)",
        ),
        ("safe_linear", {"role": {"u": "unalinged"}}, "unknown role 'unalinged'"),
    ],
)
def test_api_refuses_a_value_outside_its_domain_in_one_line(method, values, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        api_merge(method, **values)


@pytest.mark.parametrize(
    ("method", "values"),
    [
        ("safemerge", {"merge_type": "dare_linear", "density": 1.0}),
        (
            "harm_removal",
            {"density": 1e-9, "scale": -2.0, "allow_extrapolation": True},
        ),  # λ < 0: opt-in
        ("safe_lora", {"threshold": 0}),
        ("safe_linear", {"threshold": "1e-1", "weight": {"f": 1}}),  # YAML's 1e-1 is a string
        ("lox", {"k": 3.0, "alpha": 0.0}),
    ],
)
def test_api_takes_the_edges_of_each_domain(method, values):
    assert torch.isfinite(api_merge(method, **values)).all()


@pytest.mark.parametrize(
    ("method", "roles", "values", "message"),
    [
        (
            "safemerge",
            ("unaligned", "safe"),
            {"merge_type": "dare_linear", "density": 0},
            "parameter 'density': Input should be greater than 0 (got 0)",
        ),
        (
            "harm_removal",
            ("harmful",),
            {"density": 1.5},
            "parameter 'density': Input should be less than or equal to 1 (got 1.5)",
        ),
        (
            "safe_lora",
            ("unaligned",),
            {"threshold": True},
            "parameter 'threshold': Input should be a number, not a boolean (got True)",
        ),
    ],
)
def test_planner_refuses_a_value_outside_its_domain_in_one_line(
    tmp_path, family, method, roles, values, message
):
    models = {**family, "harmful": family["safe"]}  # any aligned-shaped model: nothing loads
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yml", recipe_for(method, models, roles, **values))
    result = yaml_in_process(recipe, out)
    assert one_line(result) == message
    assert "Executing graph" not in result.stderr
    assert not out.exists()


def test_planner_refuses_a_boolean_weight_of_one_model(tmp_path, family):
    recipe = recipe_for("safe_linear", family, ("unaligned",))
    recipe["models"][0]["parameters"] = {"weight": True}
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), tmp_path / "out")
    line = one_line(result)
    assert line.startswith("parameter 'weight' of ") and str(family["finetuned"]) in line
    assert line.endswith(": Input should be a number, not a boolean (got True)")


def test_every_gated_method_defaults_to_the_one_threshold():
    defaults = {
        method.spec.name: p.default
        for method in METHODS
        for p in method.spec.parameters
        if p.name == "threshold"
    }
    assert defaults == dict.fromkeys(("safe_linear", "safemerge", "safe_lora"), DEFAULT_THRESHOLD)


def test_parameters_import_nothing_above_the_lowest_layer():
    tree = ast.parse(open(parameters.__file__, encoding="utf-8").read())
    ours = {
        f"{node.module}.{alias.name}"
        if node.module in ("mergekit_safety", "mergekit_safety.core")  # a package: name the module
        else node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and "mergekit_safety" in node.module
        for alias in node.names
    }
    assert ours <= {
        "mergekit_safety.core.runs",
        "mergekit_safety.core.errors",
        "mergekit_safety.core.roles",
    }


# --- harm_removal's trim and mergekit.sparsify.magnitude ---------------------------------------


def _tensors(dtype: torch.dtype, ties: bool) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    out = []
    for _ in range(20):
        t = torch.randn(37, 53, generator=generator)
        if ties:  # multiples of 1/3, none zero (a kept zero would not count as kept)
            t = (t.abs() * 3).round().clamp(min=1) * t.sign() / 3
        out.append(t.to(dtype))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("density", [0.01, 0.1, 0.37, 0.9])
def test_trim_keeps_what_mergekit_magnitude_keeps_up_to_ties_and_signed_zeros(dtype, ties, density):
    """Why harm_removal keeps its own ``trim``: not bit-identical to ``sparsify.magnitude``.

    Both keep ⌊density·n⌋ (at least one) entries of the largest magnitude, so the kept
    magnitudes are equal; but mergekit zeroes by ``tensor * mask`` (a trimmed negative entry
    becomes −0.0, ours +0.0), and where several entries tie at the cut, ``argsort`` and
    ``topk`` keep different ones of them.
    """
    split_ties = 0
    for tensor in _tensors(dtype, ties):
        ours, theirs = trim(tensor, density), magnitude(tensor, density)
        keep = max(1, int(density * tensor.numel()))
        assert int((ours != 0).sum()) == int((theirs != 0).sum()) == keep
        kept = ours.abs().flatten().sort().values
        assert torch.equal(kept, theirs.abs().flatten().sort().values)
        assert torch.equal(ours[ours != 0], tensor[ours != 0])  # kept entries are untouched
        trimmed_negative = (ours == 0) & (tensor < 0)
        assert not torch.signbit(ours[trimmed_negative]).any()
        assert torch.signbit(theirs[trimmed_negative]).all()
        cut = tensor.abs().flatten().sort(descending=True).values[keep - 1]
        differ = ours != theirs
        assert torch.all(tensor[differ].abs() == cut)  # only entries tied at the cut
        split_ties += bool(differ.any())
    if ties and dtype == torch.float32:
        assert split_ties > 0  # the tie choice does differ: mergekit's result is not ours
