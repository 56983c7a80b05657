"""Bad roles, parameters, paths and model pairs: one line, raised before tensors load."""

from __future__ import annotations

import pytest
import torch
from helpers import recipe_for, tiny_llama, write_recipe, yaml_in_process
from mergekit.merge_methods import merge_tensors

from mergekit_safety.core.errors import ConfigError, find_config_error


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("mergekit-safety: error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "Executing graph" not in stderr  # failed while planning, before any tensor loaded
    return lines[0]


BAD_ROLES = [
    ("safemerge", ("unaligned",), "needs a model with role 'safe'"),
    ("safemerge", ("safe",), "needs a model with role 'unaligned'"),
    ("safe_lora", (), "needs a model with role 'unaligned'"),
    ("safe_lora", ("unaligned", "safe"), "takes no model with role 'safe'"),
    ("safe_linear", ("safe",), "takes no model with role 'safe'"),
]


@pytest.mark.parametrize(("method", "roles", "message"), BAD_ROLES)
def test_wrong_or_missing_roles(tmp_path, family, method, roles, message):
    recipe = write_recipe(tmp_path / "r.yml", recipe_for(method, family, roles))
    result = yaml_in_process(recipe, tmp_path / "out")
    assert result.returncode != 0
    assert message in one_error_line(result.stderr)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_duplicated_and_unknown_roles(tmp_path, family):
    duplicated = recipe_for("safe_lora", family, ("unaligned", "unaligned"))
    duplicated["models"][2]["model"] = str(family["safe"])
    result = yaml_in_process(write_recipe(tmp_path / "d.yml", duplicated), tmp_path / "d")
    assert "at most 1 model(s) with role 'unaligned'" in one_error_line(result.stderr)

    unknown = recipe_for("safe_lora", family, ("unaligned",))
    unknown["models"][1]["parameters"]["role"] = "aligned"
    result = yaml_in_process(write_recipe(tmp_path / "u.yml", unknown), tmp_path / "u")
    assert "unknown role 'aligned'" in one_error_line(result.stderr)


def test_missing_base_model(tmp_path, family):
    recipe = recipe_for("safe_linear", family, ())
    del recipe["base_model"]
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), tmp_path / "out")
    assert result.returncode == 1
    assert "safe_linear needs base_model" in one_error_line(result.stderr)


def test_mismatched_models(tmp_path, family):
    wider = tiny_llama(tmp_path / "wider", seed=5, hidden=48)
    recipe = recipe_for("safe_lora", family, ("unaligned",))
    recipe["models"][0]["model"] = str(wider)
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), tmp_path / "out")
    assert "mismatched models: hidden_size is 48" in one_error_line(result.stderr)


def test_api_errors_are_value_errors_raised_before_kernels():
    a = torch.zeros(4, 4)
    with pytest.raises(ValueError) as caught:
        merge_tensors(
            [a, a + 1, a],
            "safemerge",
            base_index=0,
            ids=["a", "f", "u"],
            parameters={"role": {"f": "finetuned", "u": "unaligned"}},
        )
    assert isinstance(find_config_error(caught.value), ConfigError)
    assert "needs a model with role 'safe'" in str(caught.value)
    with pytest.raises(ValueError, match="unknown role 'bogus'"):
        merge_tensors([a, a + 1], "safe_linear", base_index=0, parameters={"role": "bogus"})
