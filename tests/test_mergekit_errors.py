"""mergekit's own failures reach the user as one line while the plugin is installed (issue #27)."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import one_line, recipe_for, write_recipe, yaml_in_process
from safetensors.torch import load_file, save_file


def _model_copy(family, tmp_path, name, edit=None, config=None):
    target = tmp_path / name
    shutil.copytree(family["finetuned"], target)
    if edit is not None:
        tensors = load_file(target / "model.safetensors")
        save_file(edit(tensors), target / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        (target / "config.json").write_text(config)
    return target


def _cases(family, tmp_path):
    plain = recipe_for("safe_linear", family, ())

    def with_model(path):
        return {**plain, "models": [{"model": str(path)}]}

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(family["finetuned"] / "config.json", no_weights)
    bad_json = _model_copy(family, tmp_path, "bad_json", config="{not json")
    vocab = json.loads((family["finetuned"] / "config.json").read_text())
    vocab["vocab_size"] -= 10

    def fewer_rows(tensors):
        cut = ("embed_tokens", "lm_head")
        return {k: v[:-10] if any(c in k for c in cut) else v for k, v in tensors.items()}

    small_vocab = _model_copy(family, tmp_path, "vocab", fewer_rows, json.dumps(vocab))
    missing = _model_copy(
        family, tmp_path, "missing", lambda t: {k: v for k, v in t.items() if "1.mlp.up" not in k}
    )
    return {
        "no models": (
            {k: v for k, v in plain.items() if k != "models"},
            "the recipe needs exactly one of `models`, `slices` or `modules`",
        ),
        "dtype float13": (
            {**plain, "dtype": "float13"},
            "dtype: unknown dtype 'float13' (use float32, float16 or bfloat16)",
        ),
        "no weights": (
            with_model(no_weights),
            f"no weights in {no_weights} (no *.safetensors or *.bin files): not a model directory",
        ),
        "config not JSON": (
            with_model(bad_json),
            f"{bad_json}/config.json is not valid JSON: not a model directory",
        ),
        "vocabularies differ": (
            with_model(small_vocab),
            "model.embed_tokens.weight: the models' vocabularies differ in size ((40, 32), "
            "(50, 32)); add `tokenizer: {source: base}` to the recipe to align them",
        ),
        "tensor missing": (
            with_model(missing),
            f"{missing} has no tensor model.layers.1.mlp.up_proj.weight: the models are not of "
            "one architecture",
        ),
    }


CASES = [
    "no models",
    "dtype float13",
    "no weights",
    "config not JSON",
    "vocabularies differ",
    "tensor missing",
]


@pytest.mark.parametrize("case", CASES)
def test_mergekit_failures_give_one_line_and_no_output(tmp_path, family, case):
    """Each is known from the recipe and the file headers: refused before any tensor merges
    (issue #40: dtype, vocabularies and a missing tensor were found while executing)."""
    recipe, message = _cases(family, tmp_path)[case]
    out = tmp_path / "out"
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out)
    line = one_line(result)
    assert line.startswith(message), line
    assert "Executing graph" not in result.stderr
    assert not out.exists()


def test_an_unaligned_twin_of_the_aligned_model_is_refused_before_any_merge(tmp_path, family):
    twin = tmp_path / "twin"
    shutil.copytree(family["aligned"], twin)
    recipe = recipe_for("safe_linear", family, ("unaligned",), threshold=0.35)
    recipe["models"][1]["model"] = str(twin)
    out = tmp_path / "out"
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out)
    assert "Executing graph" not in result.stderr  # stopped while planning: nothing merged
    assert f"the unaligned model {twin} equals base_model" in one_line(result)
    assert not out.exists()


def test_same_matrices_stops_at_a_difference_and_sees_equality(family, tmp_path):
    from mergekit.common import ModelReference

    from mergekit_safety.mergekit_internals import same_matrices

    twin = tmp_path / "twin"
    shutil.copytree(family["aligned"], twin)
    aligned, unaligned = (ModelReference.parse(str(family[k])) for k in ("aligned", "unaligned"))
    assert same_matrices(aligned, ModelReference.parse(str(twin))) is True
    assert same_matrices(aligned, unaligned) is False


def test_an_output_that_cannot_be_written_is_refused_before_any_merge(tmp_path, family):
    import subprocess

    out = tmp_path / "locked"
    out.mkdir()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here: no directory a root user cannot write")
    try:
        recipe = write_recipe(tmp_path / "r.yml", recipe_for("safe_linear", family, ()))
        result = yaml_in_process(recipe, out)
        assert "Executing graph" not in result.stderr
        assert one_line(result) == f"output {out} is not writable (Operation not permitted)"
        assert list(out.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)


def test_a_lora_adapter_for_another_model_gives_one_line(tmp_path, family):
    from helpers import REPO

    adapter = REPO / "recipes" / "demo" / "finetuned_adapter"  # the demo's widths, not family's
    recipe = recipe_for("safe_linear", family, ())
    recipe["models"][0]["model"] = f"{family['aligned']}+{adapter}"
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    result = yaml_in_process(
        write_recipe(tmp_path / "r.yml", recipe), out, "--lora-merge-cache", cache
    )
    assert one_line(result) == (  # from the files, before mergekit merges the adapter (#40)
        f"{adapter}: model.layers.0.mlp.down_proj has LoRA factors for a 128×256 weight, but "
        f"{family['aligned']} has model.layers.0.mlp.down_proj.weight of 32×64: the adapter was "
        "trained on another model"
    )
    assert "Warmup loader cache" not in result.stderr
    assert not out.exists()


# --- #27: a typo or an unused key never merges silently -----------------------------------------


def _keys_cases(family):
    gated = recipe_for("safe_linear", family, ("unaligned",), threshold=0.35)
    plain = recipe_for("safe_linear", family, ())
    lora = recipe_for("safe_lora", family, ("unaligned",), threshold=0.35)
    lox = recipe_for("lox", family, ("unaligned",))
    lox["models"] = lox["models"][1:]  # lox: the aligned model and V only
    harm = recipe_for("harm_removal", family, ("safe",))  # any other model stands in for H
    harm["models"][1]["parameters"] = {"role": "harmful"}
    safemerge = recipe_for("safemerge", family, ("unaligned", "safe"), threshold=0.35)

    def set_model(recipe, index, **parameters):
        recipe = json.loads(json.dumps(recipe))
        recipe["models"][index].setdefault("parameters", {}).update(parameters)
        return recipe

    def set_top(recipe, **parameters):
        recipe = json.loads(json.dumps(recipe))
        recipe.setdefault("parameters", {}).update(parameters)
        return recipe

    misspelled_section = json.loads(json.dumps(gated))
    misspelled_section["paramters"] = misspelled_section.pop("parameters")
    return {
        "thresold": (
            set_top({**gated, "parameters": {}}, thresold=0.3),
            "safe_linear: unknown parameter `thresold` in the top-level `parameters:`; "
            "did you mean `threshold`?",
        ),
        "wieght": (
            set_model(gated, 0, wieght=0.3),
            f"safe_linear: unknown parameter `wieght` in model {family['finetuned']}; "
            "did you mean `weight`?",
        ),
        "paramters section": (
            misspelled_section,
            "safe_linear: unknown recipe section `paramters`; did you mean `parameters`?",
        ),
        "threshold ungated": (
            set_top(plain, threshold=0.3),
            "safe_linear: `threshold` gates matrices by rho, which needs a model with role "
            "'unaligned'",
        ),
        "weight on safe_lora": (
            set_model(lora, 0, weight=0.5),
            f"safe_lora: `weight` in model {family['finetuned']} is not a parameter of safe_lora "
            "(safe_linear, safemerge use it)",
        ),
        "weight on harm_removal": (
            set_model(harm, 0, weight=0.5),
            f"harm_removal: `weight` in model {family['finetuned']} is not a parameter",
        ),
        "threshold on lox": (
            set_top(lox, threshold=0.3),
            "lox: `threshold` in the top-level `parameters:` is not a parameter of lox",
        ),
        "top_k on lox": (
            set_top(lox, top_k=3),
            "lox: `top_k` does nothing here: lox does not gate (safe_linear, safe_lora, "
            "safemerge do)",
        ),
        "weight of the unaligned model": (
            set_model(gated, 1, weight=0.5),
            f"safe_linear: `weight` of model {family['unaligned']} (role unaligned) is not used",
        ),
        "safemerge threshold per model": (
            set_model(safemerge, 0, threshold=0.2),
            "safemerge: `threshold` is a recipe-wide parameter; set it under the top-level "
            "`parameters:`",
        ),
        "threshold -1 before warm-up": (
            set_top(gated, threshold=-1),
            "parameter 'threshold': Input should be greater than or equal to 0 (got -1)",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["thresold", "wieght", "paramters section", "threshold ungated", "weight on safe_lora",
     "weight on harm_removal", "threshold on lox", "top_k on lox",
     "weight of the unaligned model", "safemerge threshold per model",
     "threshold -1 before warm-up"],
)  # fmt: skip
def test_unknown_unused_or_mistyped_keys_are_refused_before_anything_loads(tmp_path, family, case):
    recipe, message = _keys_cases(family)[case]
    out = tmp_path / "out"
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out)
    assert one_line(result).startswith(message), one_line(result)
    assert "Warmup loader cache" not in result.stderr  # refused as the recipe was read
    assert not out.exists()


def test_the_same_recipes_with_correct_keys_still_merge(tmp_path, family):
    recipe = recipe_for("safe_linear", family, ("unaligned",), threshold=0.35)
    recipe["models"][0]["parameters"] = {"weight": 0.3}
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]


def test_values_outside_their_meaning_are_refused(tmp_path, family):
    harm = recipe_for("harm_removal", family, ("safe",), scale=-3)
    harm["models"][1]["parameters"] = {"role": "harmful"}
    lox = recipe_for("lox", family, ("unaligned",), k=100000)
    lox["models"] = lox["models"][1:]
    for name, recipe, message in (
        ("harm", harm, "harm_removal: scale (λ) is -3, below 0: that adds the harm direction "
                       "instead of removing it; set `allow_extrapolation: true` if meant"),
        ("lox", lox, "lox: k = 100000 is more than lm_head.weight has (50×32: at most 32); "
                     "use k <= 32, or 0 for the whole update"),
    ):  # fmt: skip
        out = tmp_path / f"out-{name}"
        line = one_line(yaml_in_process(write_recipe(tmp_path / f"{name}.yml", recipe), out))
        assert line.startswith(message), line
        assert not out.exists()


def test_a_negative_scale_merges_when_asked_for_and_says_so(tmp_path, family):
    harm = recipe_for("harm_removal", family, ("safe",), scale=-1, allow_extrapolation=True)
    harm["models"][1]["parameters"] = {"role": "harmful"}
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", harm), tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "scale -1 adds the harm direction (allow_extrapolation: true)" in result.stderr
