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
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from adapter_helpers import mergekit_safety
from helpers import (
    cli_in_process,
    click_line,
    gated,
    mergekit_multi,
    mergekit_yaml,
    multi_in_process,
    one_line,
    write_recipe,
    yaml_in_process,
)
from mergekit.merge_methods import merge_state_dicts, merge_tensors
from safetensors.torch import load_file, save_file

from mergekit_safety.acceptance import Gate
from mergekit_safety.errors import ConfigError


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

    from mergekit_safety.sweep import passes

    assert not passes(summary | {"refusal_rate": 1.0}, Gate(min_refusal=0.9))
    assert passes(summary | {"refusal_rate": 1.0, "empty_rate": 0.1}, Gate(min_refusal=0.9))


def test_a_genuine_bug_keeps_its_traceback():
    from mergekit_safety.errors import explain

    assert explain(RuntimeError("index 3 is out of bounds")) is None
    assert explain(KeyError("model.layers.0.weight")) is None
    assert explain(ConfigError("bad")) == "bad"


def test_an_output_path_that_cannot_be_a_directory(tmp_path, family):
    (tmp_path / "file").write_text("not a directory")
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    line = one_line(yaml_in_process(recipe, tmp_path / "file" / "out", cwd=tmp_path))
    assert line == f"Not a directory: {tmp_path / 'file' / 'out'}"
