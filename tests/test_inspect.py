"""``mergekit-safety inspect``: the decisions it prints are the ones the merge takes."""

from __future__ import annotations

import json

import torch
from helpers import cli_in_process, recipe_for, write_recipe, yaml_in_process
from safetensors.torch import load_file

from mergekit_safety.methods import method_names

run_cli = cli_in_process


def test_inspect_json_matches_what_mergekit_yaml_does(tmp_path, family):
    recipe = write_recipe(
        tmp_path / "r.yml", recipe_for("safe_lora", family, ("unaligned",), threshold=0.68)
    )
    result = run_cli("inspect", str(recipe), "--json", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and all(row["gated"] for row in rows)
    assert {row["merge"] for row in rows} == {True, False}
    assert not (tmp_path / "out").exists()

    assert yaml_in_process(recipe, tmp_path / "out").returncode == 0
    merged = load_file(tmp_path / "out" / "model.safetensors")
    finetuned = load_file(family["finetuned"] / "model.safetensors")
    for row in rows:
        kept = torch.equal(merged[row["tensor"]], finetuned[row["tensor"]])
        assert kept == (not row["merge"]), row
        assert (row["rho"] <= 0.68) == row["merge"]


def test_inspect_table_and_errors(tmp_path, family):
    recipe = write_recipe(
        tmp_path / "r.yml", recipe_for("safemerge", family, ("unaligned", "safe"))
    )
    table = run_cli("inspect", str(recipe), "--quiet", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "rho" in table.stdout and "tensors merged" in table.stdout

    missing = run_cli("inspect", str(tmp_path / "nope.yml"), cwd=tmp_path)
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines() == [f"Error: recipe not found: {tmp_path}/nope.yml"]

    bad_role = recipe_for("safemerge", family, ("unaligned",))
    result = run_cli("inspect", str(write_recipe(tmp_path / "b.yml", bad_role)), cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: safemerge needs a model with role 'safe' (set `parameters: {role: ...}`)"
    )

    stock = {
        "merge_method": "linear",
        "models": [{"model": str(family["aligned"]), "parameters": {"weight": 1.0}}],
    }
    result = run_cli("inspect", str(write_recipe(tmp_path / "s.yml", stock)), cwd=tmp_path)
    assert f"inspect explains {method_names()} recipes" in result.stderr

    gone = recipe_for("safe_lora", family, ("unaligned",))
    gone["models"][0]["model"] = "./no/such/model"
    result = run_cli("inspect", str(write_recipe(tmp_path / "g.yml", gone)), cwd=tmp_path)
    assert result.stderr.strip().splitlines()[-1] == "Error: model not found: ./no/such/model"
