"""Sweep: value ranges, recipe planning, gate selection, the run's clean-up, and the CLI."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from helpers import FakeEvaluator, write_recipe  # noqa: E402

from mergekit_safety.cli import main  # noqa: E402
from mergekit_safety.core.acceptance import Gate, passes  # noqa: E402
from mergekit_safety.core.errors import ConfigError  # noqa: E402
from mergekit_safety.publish.plot import pareto_front  # noqa: E402
from mergekit_safety.tuning.choice import SweepPoint, choose, directions  # noqa: E402
from mergekit_safety.tuning.grid import parse_assignment, parse_values, plan_sweep  # noqa: E402
from mergekit_safety.tuning.grid_sampler import run_sweep  # noqa: E402
from mergekit_safety.tuning.runners import SerialRunner  # noqa: E402
from mergekit_safety.tuning.sweep_report import write_reports  # noqa: E402


def choose_by_side(points, gate, parameters):
    """The choice rule with each parameter's side from SWEEPABLE."""
    return choose(points, gate, directions(parameters))


# --- value ranges -------------------------------------------------------------------------------


def test_range_includes_stop_and_keeps_typed_decimals():
    values = parse_values("0.1:0.9:0.1")
    assert len(values) == 9
    assert values[0] == 0.1 and values[2] == 0.3 and values[-1] == 0.9  # no 0.30000000000000004


def test_range_stops_before_an_unreached_stop():
    assert parse_values("0.2:0.5:0.2") == [0.2, 0.4]
    assert parse_values("0.5:0.5:0.1") == [0.5]


def test_comma_list_keeps_order():
    assert parse_values("0.7, 0.3,0.5") == [0.7, 0.3, 0.5]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0.1:0.9:0", "step must be positive"),
        ("0.1:0.9:-0.1", "step must be positive"),
        ("0.9:0.1:0.1", "START <= STOP"),
        ("0.1:0.9", "START:STOP:STEP"),
        ("0:1:0.0001", "at most"),
        ("0.5,1.5", "[0, 1]"),
        ("-0.1:0.5:0.1", "[0, 1]"),
        ("0.3,0.3", "repeated"),
        ("0.3,abc", "not a number"),
        ("nan", "finite"),
        ("0.3,", "not a number"),
    ],
)
def test_bad_values_are_rejected(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_values(spec)


def test_assignment():
    assert parse_assignment("threshold=0.2,0.3") == ("threshold", [0.2, 0.3])
    assert parse_assignment("density=0.5") == ("density", [0.5])  # harm_removal's
    with pytest.raises(ValueError, match="cannot sweep 'epsilon'"):
        parse_assignment("epsilon=0.5")
    with pytest.raises(ValueError, match="NAME=VALUES"):
        parse_assignment("weight")


# --- the choice ----------------------------------------------------------------------------------


def point(value, refusal=0.9, over=0.1, accuracy=0.5):
    return SweepPoint(
        value,
        {"refusal_rate": refusal, "over_refusal_rate": over, "task_accuracy": accuracy},
    )


def test_choose_best_accuracy_among_passing():
    points = [
        point(0.3, 0.95, accuracy=0.4),
        point(0.6, 0.85, accuracy=0.6),
        point(0.9, 0.5, 0.1, 0.9),
    ]
    chosen = choose_by_side(points, Gate(min_refusal=0.8), "weight")
    assert chosen is points[1]  # 0.9 has better accuracy but fails the refusal gate


def test_choose_over_refusal_gate():
    points = [point(0.3, over=0.5, accuracy=0.9), point(0.6, over=0.2, accuracy=0.4)]
    assert choose_by_side(points, Gate(max_over_refusal=0.3), "weight") is points[1]
    assert (
        choose_by_side(points, Gate(max_over_refusal=0.5), "weight") is points[0]
    )  # the bound is inclusive


def test_choose_gate_bounds_are_inclusive():
    assert passes(
        {"refusal_rate": 0.8, "over_refusal_rate": 0.2}, Gate(min_refusal=0.8, max_over_refusal=0.2)
    )
    assert not passes(
        {"refusal_rate": 0.79, "over_refusal_rate": 0.2},
        Gate(min_refusal=0.8, max_over_refusal=0.2),
    )


def test_ties_go_to_the_finetuned_side():
    weights = [point(0.3), point(0.7), point(0.5)]
    assert choose_by_side(weights, Gate(min_refusal=0.5), "weight").value == 0.7
    thresholds = [point(0.3), point(0.1), point(0.5)]
    assert choose_by_side(thresholds, Gate(min_refusal=0.5), "threshold").value == 0.1


def test_missing_gate_metric_fails_the_gate():
    points = [point(0.3, refusal=None, accuracy=0.9), point(0.6, refusal=math.nan, accuracy=0.8)]
    points.append(point(0.9, accuracy=0.1))
    assert choose_by_side(points, Gate(min_refusal=0.5), "weight") is points[2]
    no_over = SweepPoint(0.2, {"refusal_rate": 1.0, "task_accuracy": 1.0})
    assert choose_by_side([no_over], Gate(max_over_refusal=0.5), "weight") is None
    assert (
        choose_by_side([no_over], Gate(min_refusal=0.5), "weight") is no_over
    )  # over-refusal not gated


def test_missing_accuracy_ranks_last_but_can_be_chosen():
    points = [point(0.9, accuracy=None), point(0.3, accuracy=0.0)]
    assert choose_by_side(points, Gate(min_refusal=0.5), "weight") is points[1]
    assert choose_by_side(points[:1], Gate(min_refusal=0.5), "weight") is points[0]
    ties = [point(0.9, accuracy=None), point(0.3, accuracy=None)]
    assert choose_by_side(ties, Gate(min_refusal=0.5), "weight").value == 0.9


def test_nothing_passes():
    assert (
        choose_by_side([point(0.3, 0.2), point(0.6, 0.1)], Gate(min_refusal=0.5), "weight") is None
    )
    assert choose_by_side([], Gate(min_refusal=0.5), "weight") is None


def test_no_gate_means_best_accuracy():
    points = [point(0.3, 0.0, 1.0, 0.2), point(0.6, 0.0, 1.0, 0.7)]
    assert choose_by_side(points, Gate(), "weight") is points[1]


def test_pareto_front():
    xy = [(0.2, 0.9), (0.5, 0.7), (0.4, 0.6), (0.8, 0.2), (0.5, 0.7)]
    # (0.4, 0.6) is beaten by (0.5, 0.7); equal points do not dominate each other
    assert pareto_front(xy) == [0, 1, 3, 4]


# --- planning -----------------------------------------------------------------------------------


def recipe_dict(family, method="safe_linear", **extra):
    models = [
        {"model": str(family["finetuned"])},
        {"model": str(family["unaligned"]), "parameters": {"role": "unaligned"}},
    ]
    if method == "safemerge":
        models.append({"model": str(family["safe"]), "parameters": {"role": "safe"}})
    return {
        "merge_method": method,
        "base_model": str(family["aligned"]),
        "models": models,
        "parameters": {"threshold": 0.35},
        "dtype": "float32",
        **extra,
    }


def test_plan_sets_weight_on_finetuned_models_only(family, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family, "safemerge"))
    plan = plan_sweep(recipe, "weight", [0.5])
    assert plan.aligned == str(family["aligned"])
    assert plan.finetuned == (str(family["finetuned"]),)
    models = plan.recipe_with(0.5)["models"]
    assert models[0]["parameters"] == {"weight": 0.5}
    assert "weight" not in models[1]["parameters"] and "weight" not in models[2]["parameters"]
    assert "weight" not in plan.recipe["models"][0].get("parameters", {})  # a copy


def test_plan_sets_threshold_globally(family, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family, "safe_lora"))
    plan = plan_sweep(recipe, "threshold", [0.2])
    changed = plan.recipe_with(0.2)
    assert changed["parameters"]["threshold"] == 0.2
    assert changed["models"] == plan.recipe["models"]


@pytest.mark.parametrize(
    "change, parameter, message",
    [
        ({"merge_method": "no_such_method"}, "weight", "unknown merge method"),
        ({"merge_method": "safe_lora"}, "weight", "safe_lora has no per-model parameter 'weight'"),
        ({"models": "unaligned-only"}, "weight", "no fine-tuned model"),
        ({"models": "no-unaligned"}, "threshold", "needs a model with role 'unaligned'"),
        (
            {"models": "threshold-on-model"},
            "threshold",
            "is a recipe-wide parameter; set it under the top-level",
        ),
        ({"base_model": None}, "weight", "needs base_model"),
    ],
)
def test_plan_rejects_bad_recipes(family, tmp_path, change, parameter, message):
    data = recipe_dict(family)
    finetuned, unaligned = data["models"]
    models = {
        "unaligned-only": [unaligned],
        "no-unaligned": [finetuned],
        "threshold-on-model": [{"model": finetuned["model"], "parameters": {"threshold": 0.2}}],
    }
    for key, value in change.items():
        data[key] = models.get(value, value) if key == "models" else value
    if data["base_model"] is None:
        del data["base_model"]
    if change.get("models") == "threshold-on-model":
        data["models"].append(unaligned)
    recipe = write_recipe(tmp_path / "r.yaml", data)
    with pytest.raises(ConfigError, match=message):
        plan_sweep(recipe, parameter, [0.5])


def test_plan_rejects_missing_and_unparsable_recipes(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        plan_sweep(tmp_path / "nope.yaml", "weight", [0.5])
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        plan_sweep(bad, "weight", [0.5])


# --- the run ------------------------------------------------------------------------------------


def merge_options():
    from mergekit.options import MergeOptions

    return MergeOptions(quiet=True)


def test_run_keeps_the_choice_and_nothing_else(family, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    work, out = tmp_path / "work", tmp_path / "chosen"
    work.mkdir()
    evaluator = FakeEvaluator()
    plan = plan_sweep(recipe, "weight", [0.2, 0.5, 0.8])
    runner = SerialRunner(merge_options(), work_dir=work)
    result = run_sweep(plan, evaluator, runner, gate=Gate(min_refusal=0.4), out=out, progress=False)
    assert result.chosen is not None and result.chosen.value == 0.5
    assert evaluator.calls.count(str(family["aligned"])) == 1
    assert evaluator.calls.count(str(family["finetuned"])) == 1
    assert len(evaluator.calls) == 2 + 3
    assert list(work.iterdir()) == []
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["models"][0]["parameters"] == {
        "weight": 0.5
    }
    assert (out / "model.safetensors").is_file()
    paths = write_reports(result, out, {"judge": None})
    record = json.loads(paths["json"].read_text())
    assert record["chosen"]["value"] == 0.5
    assert [p["passes"] for p in record["points"]] == [True, True, False]
    assert [p["chosen"] for p in record["points"]] == [False, True, False]
    assert paths["png"].stat().st_size > 0
    assert "weight=0.5" in paths["md"].read_text()


@pytest.mark.parametrize(
    ("error", "raise_at"),
    # Ctrl-C on the aligned model and on the second merge. An error at a point is recorded and
    # the sweep goes on; an error on a reference ends it (the tests below).
    [(KeyboardInterrupt, 1), (KeyboardInterrupt, 4)],
)
def test_interrupted_run_leaves_no_temporary_models(family, tmp_path, error, raise_at):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    work, out = tmp_path / "work", tmp_path / "chosen"
    work.mkdir()
    plan = plan_sweep(recipe, "weight", [0.2, 0.5, 0.8])
    evaluator = FakeEvaluator(raise_at=raise_at, error=error)
    with pytest.raises(error, match="on purpose"):
        runner = SerialRunner(merge_options(), work_dir=work)
        run_sweep(plan, evaluator, runner, gate=Gate(min_refusal=0.0), out=out, progress=False)
    assert len(evaluator.calls) == raise_at
    assert list(work.iterdir()) == []
    assert not out.exists()


def fails_at(weight: float):
    """A FakeEvaluator that raises on the merge of one weight."""
    fake = FakeEvaluator()

    def evaluator(path: str) -> dict:
        config = Path(path) / "mergekit_config.yml"
        if config.is_file():
            if yaml.safe_load(config.read_text())["models"][0]["parameters"]["weight"] == weight:
                raise ValueError(f"no evaluation at {weight}, on purpose")
        return fake(path)

    return evaluator


def test_serial_runner_records_a_failed_point_as_ray_does(family, tmp_path):
    from mergekit_safety.tuning.sweep_report import markdown_rows, sweep_record

    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    work, out = tmp_path / "work", tmp_path / "chosen"
    work.mkdir()
    plan = plan_sweep(recipe, "weight", [0.2, 0.5, 0.8])
    runner = SerialRunner(merge_options(), work_dir=work)
    result = run_sweep(plan, fails_at(0.5), runner, gate=Gate(min_refusal=0.1), out=out,
                       progress=False)  # fmt: skip
    assert [p.value for p in result.points] == [0.2, 0.8]
    assert result.failed == [(0.5, "ValueError: no evaluation at 0.5, on purpose")]
    assert result.chosen is not None and result.chosen.value == 0.8  # the failed point ignored
    record = sweep_record(result)
    assert [(r["weight"], r["kind"], r["passes"], r["chosen"]) for r in record["failed"]] == [
        (0.5, "failed", False, False)
    ]
    assert "not evaluated: ValueError: no evaluation at 0.5, on purpose" in markdown_rows(
        result.rows()
    )
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["models"][0]["parameters"] == {
        "weight": 0.8
    }
    assert list(work.iterdir()) == []


def test_a_failed_reference_ends_the_run(family, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    work = tmp_path / "work"
    work.mkdir()
    plan = plan_sweep(recipe, "weight", [0.2])
    runner = SerialRunner(merge_options(), work_dir=work)
    with pytest.raises(ConfigError, match=r"evaluating .*aligned failed: RuntimeError: evaluator"):
        run_sweep(plan, FakeEvaluator(raise_at=1), runner, progress=False)
    assert list(work.iterdir()) == []


DRIVER = """
import sys, time
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores SIGINT
sys.path.insert(0, {tests!r})
from mergekit_safety.cli import main, sweep
from helpers import FakeEvaluator

fake = FakeEvaluator()

def slow(path):
    if "mergekit-safety-" in path:
        print("EVALUATING", flush=True)
        time.sleep(60)
    return fake(path)

from mergekit_safety.evaluation.settings import EvalSettings
EvalSettings.build = lambda self, **_kwargs: slow
main({args!r})
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_killed_sweep_leaves_no_temporary_models(family, tmp_path, signum):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    work, out = tmp_path / "work", tmp_path / "chosen"
    work.mkdir()
    args = [
        "sweep",
        str(recipe),
        "--set",
        "weight=0.3,0.6",
        "--min-refusal",
        "0",
        "--out",
        str(out),
        "--work-dir",
        str(work),
        "--quiet",
    ]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(Path(__file__).parent), args=args))
    process = subprocess.Popen(
        [sys.executable, str(driver)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for line in process.stdout:
            if "EVALUATING" in line:
                break
        assert list(work.iterdir()), "the merge should be in the work dir while it is evaluated"
        process.send_signal(signum)
        assert process.wait(timeout=60) != 0
    finally:
        process.kill()
    assert list(work.iterdir()) == []
    assert not out.exists()


def lora_adapter(base: Path, path: Path) -> Path:
    """A random LoRA adapter for ``base`` (lora_B nonzero, so the merge changes weights)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    peft_model.save_pretrained(path)
    return path


def test_lora_finetune_is_merged_in_the_work_dir(family, tmp_path):
    adapter = lora_adapter(family["aligned"], tmp_path / "adapter")
    data = recipe_dict(family)
    data["models"][0] = {"model": f"{family['aligned']}+{adapter}"}
    recipe = write_recipe(tmp_path / "r.yaml", data)
    work = tmp_path / "work"
    work.mkdir()
    plan = plan_sweep(recipe, "weight", [0.5])
    assert plan.finetuned == (f"{family['aligned']}+{adapter}",)
    seen = []

    def evaluator(path):
        seen.append((path, (Path(path) / "config.json").is_file()))
        return FakeEvaluator()(path)

    result = run_sweep(
        plan, evaluator, SerialRunner(merge_options(), work_dir=work), progress=False
    )
    lora_path, existed = seen[1]
    assert existed and str(work) in lora_path  # the adapter merged into the work dir
    assert result.finetuned[0]["model"] == f"{family['aligned']}+{adapter}"
    assert list(work.iterdir()) == []


# --- the command --------------------------------------------------------------------------------


@pytest.fixture
def fake_cli_evaluator(monkeypatch):
    """Swap the real evaluator for a fake one in the CLI; return the fake."""
    from mergekit_safety.evaluation.settings import EvalSettings

    evaluator = FakeEvaluator()
    monkeypatch.setattr(EvalSettings, "build", lambda _self, **_kwargs: evaluator)
    return evaluator


def test_cli_nothing_passes_exits_3_and_writes_no_model(family, tmp_path, fake_cli_evaluator):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    work, out = tmp_path / "work", tmp_path / "chosen"
    work.mkdir()
    args = [
        "sweep",
        str(recipe),
        "--set",
        "weight=0.6,0.8",
        "--min-refusal",
        "0.9",
        "--out",
        str(out),
        "--work-dir",
        str(work),
        "--quiet",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3, result.output
    assert "No value passes the gate" in result.output
    assert "| weight=0.6 | merged" in result.output  # the table is printed
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    record = json.loads((out / "sweep.json").read_text())
    assert record["chosen"] is None and len(record["points"]) == 2
    assert list(work.iterdir()) == []


def test_cli_writes_model_reports_and_card(family, tmp_path, fake_cli_evaluator):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    work, out = tmp_path / "work", tmp_path / "chosen"
    work.mkdir()
    args = [
        "sweep",
        str(recipe),
        "--set",
        "weight=0.2:0.8:0.3",
        "--min-refusal",
        "0.4",
        "--out",
        str(out),
        "--work-dir",
        str(work),
        "--quiet",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Chosen weight=0.5" in result.output
    for name in ("sweep.json", "sweep.csv", "sweep.md", "sweep.png", "README.md"):
        assert (out / name).is_file(), name
    assert (out / "README.md").read_text().count("## Safety evaluation") == 1
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "weight=0.9:0.1:0.1"], "START <= STOP"),
        (["--set", "lambda=0.5"], "cannot sweep 'lambda'"),
        (["--set", "weight=0.5", "--min-refusal", "1.01"], "0<=x<=1"),
        (["--set", "weight=0.5", "--out", "OUT"], "needs a safety gate"),
    ],
)
def test_cli_rejects_bad_options_before_any_work(
    family, tmp_path, fake_cli_evaluator, extra, message
):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    extra = [str(tmp_path / "out") if arg == "OUT" else arg for arg in extra]
    result = CliRunner().invoke(main, ["sweep", str(recipe), *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert fake_cli_evaluator.calls == []


def test_cli_bad_recipe_is_one_line(tmp_path, fake_cli_evaluator):
    result = CliRunner().invoke(main, ["sweep", str(tmp_path / "nope.yaml"), "--set", "weight=0.5"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: recipe not found: {tmp_path / 'nope.yaml'}"
    ]


def test_cli_refuses_a_non_empty_out(family, tmp_path, fake_cli_evaluator):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["sweep", str(recipe), "--set", "weight=0.5", "--min-refusal", "0", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "not empty" in result.output


def test_cli_overwrite_replaces_stale_weights(family, tmp_path, fake_cli_evaluator):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model.safetensors.index.json", "keep.txt"):
        (out / name).write_text("old")
    args = ["sweep", str(recipe), "--set", "weight=0.5", "--min-refusal", "0", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--overwrite", "--quiet"])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "keep.txt" in names
    assert not names & {"model-00001-of-00002.safetensors", "model.safetensors.index.json"}


def test_cli_without_gate_only_reports(family, tmp_path, fake_cli_evaluator, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["sweep", str(recipe), "--set", "weight=0.2,0.8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Best task accuracy (no gate given): weight=0.8" in result.output
    record = json.loads((tmp_path / "sweep-r" / "sweep.json").read_text())
    assert record["gate"]["description"] == "none" and record["out"] is None


# --- end to end, with the real evaluator ----------------------------------------------------------


def test_sweep_end_to_end(family, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    work, out = tmp_path / "work", tmp_path / "chosen"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(work)}
    command = [
        sys.executable,
        "-m",
        "mergekit_safety",
        "sweep",
        str(recipe),
        "--set",
        "weight=0.3,0.9",
        "--min-refusal",
        "0",
        "--out",
        str(out),
        "--work-dir",
        str(work),
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "4",
        "--quiet",
    ]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    record = json.loads((out / "sweep.json").read_text())
    assert record["parameter"] == "weight" and record["values"] == [0.3, 0.9]
    assert record["gate"]["min_refusal"] == 0
    assert record["prompt_sets"]["harmful"] == "built-in"
    assert record["prompt_sets"]["counts"] == {"harmful": 2, "benign": 2, "task": 2}
    assert record["judge"] == "keyword"
    assert [p["value"] for p in record["points"]] == [0.3, 0.9]
    assert record["references"]["aligned"]["model"] == str(family["aligned"])
    chosen = record["chosen"]
    assert chosen["value"] in (0.3, 0.9)
    assert chosen["refusal_rate"] >= 0
    assert sum(p["chosen"] for p in record["points"]) == 1
    passing = [p for p in record["points"] if p["passes"]]
    best = max((p["task_accuracy"] or -1) for p in passing)
    assert (chosen["task_accuracy"] or -1) == best
    assert (out / "sweep.png").stat().st_size > 1000
    assert (out / "sweep.csv").read_text().count("\n") == 1 + 2 + 2
    assert (
        yaml.safe_load((out / "mergekit_config.yml").read_text())["models"][0]["parameters"][
            "weight"
        ]
        == chosen["value"]
    )
    AutoModelForCausalLM.from_pretrained(out)
    readme = (out / "README.md").read_text()
    assert readme.count("## Safety evaluation") == 1
    meta = yaml.safe_load(readme.split("---\n")[1])
    assert "safe_linear" in meta["tags"] and "base_model" not in meta  # local paths: recipe only
    assert list(work.iterdir()) == []


# --- grids: two parameters ------------------------------------------------------------------------


def test_assignments_make_a_grid_of_at_most_two():
    from mergekit_safety.tuning.grid import parse_assignments

    assert parse_assignments(["weight=0.5,0.7", "top_k=2:6:2"]) == [
        ("weight", [0.5, 0.7]),
        ("top_k", [2, 4, 6]),
    ]
    for texts, message in [
        (["weight=0.5", "weight=0.7"], "set twice"),
        (["weight=0.5", "threshold=0.3", "top_k=2"], "at most 2"),
        (["threshold=0.3", "top_k=2"], "alternatives"),
        (["top_k=2.5"], "whole numbers"),
        (["top_k=0,1"], "whole numbers"),
        (["fraction=0,0.5"], "(0, 1]"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
            parse_assignments(texts)


def test_grid_ties_go_to_the_finetuned_side_in_set_order():
    points = [SweepPoint((w, t), {"refusal_rate": 1.0, "task_accuracy": 0.5})
              for w in (0.5, 0.7) for t in (0.2, 0.4)]  # fmt: skip
    assert choose_by_side(points, Gate(min_refusal=0.5), ("weight", "threshold")).value == (
        0.7,
        0.2,
    )
    swapped = [SweepPoint(p.value[::-1], p.metrics) for p in points]
    assert choose_by_side(swapped, Gate(min_refusal=0.5), ("threshold", "weight")).value == (
        0.2,
        0.7,
    )


def test_grid_plan_sets_both_and_one_gate_choice(family, tmp_path):
    from mergekit_safety.tuning.grid import plan_grid

    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    plan = plan_grid(recipe, [("weight", [0.5, 0.7]), ("top_k", [2, 4, 6])])
    assert plan.grid and len(plan.values) == 6 and plan.values[1] == (0.5, 4)
    changed = plan.recipe_with((0.7, 4))
    assert changed["parameters"] == {"top_k": 4}  # the recipe's threshold is replaced
    assert changed["models"][0]["parameters"] == {"weight": 0.7}
    assert plan.label((0.7, 4)) == "weight=0.7,top_k=4"
    ungated = recipe_dict(family)
    ungated["models"] = ungated["models"][:1]
    ungated_recipe = write_recipe(tmp_path / "u.yaml", ungated)
    with pytest.raises(
        ConfigError,
        match="gates matrices by rho, which needs a model with role 'unaligned'",
    ):
        plan_grid(ungated_recipe, [("weight", [0.5]), ("top_k", [2])])


def test_cli_grid_with_fake_evaluator(family, tmp_path, fake_cli_evaluator):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(family))
    work, out = tmp_path / "work", tmp_path / "chosen"
    work.mkdir()
    args = ["sweep", str(recipe), "--set", "weight=0.2,0.5", "--set", "threshold=0.3,0.6",
            "--min-refusal", "0.4", "--out", str(out), "--work-dir", str(work)]  # fmt: skip
    args.append("--quiet")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # the fake scores by weight only: 0.5 is best, and the tie over threshold goes to 0.3
    assert "Chosen weight=0.5,threshold=0.3" in result.output
    record = json.loads((out / "sweep.json").read_text())
    assert record["parameters"] == ["weight", "threshold"] and len(record["points"]) == 4
    assert [(p["weight"], p["threshold"]) for p in record["points"]] == [
        (0.2, 0.3), (0.2, 0.6), (0.5, 0.3), (0.5, 0.6)
    ]  # fmt: skip
    assert record["chosen"]["weight"] == 0.5 and record["chosen"]["threshold"] == 0.3
    header = (out / "sweep.csv").read_text().splitlines()[0]
    assert header.startswith("kind,value,weight,threshold,model")
    assert (out / "sweep-heatmap.png").stat().st_size > 1000
    written = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert written["parameters"]["threshold"] == 0.3
    assert "threshold ∈ {0.3, 0.6}" in (out / "README.md").read_text()
    assert list(work.iterdir()) == []


def test_demo_grid_sweep_end_to_end(tmp_path):
    """A 2×3 grid (λ × top_k) on the committed demo models with the real evaluator, kept short."""
    repo = Path(__file__).resolve().parents[1]
    work, out = tmp_path / "work", tmp_path / "chosen"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(work)}
    command = [sys.executable, "-m", "mergekit_safety", "sweep", "recipes/safe_linear_gated.yml",
               "--set", "weight=0.6,0.8", "--set", "top_k=4,8,12", "--min-refusal", "0",
               "--prompts", "recipes/demo/prompts", "--limit", "3", "--max-new-tokens", "8",
               "--out", str(out), "--work-dir", str(work), "--quiet"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=repo)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((out / "sweep.json").read_text())
    points = record["points"]
    assert [(p["weight"], p["top_k"]) for p in points] == [
        (w, k) for w in (0.6, 0.8) for k in (4, 8, 12)
    ]
    assert all(p["refusal_rate"] is not None and p["task_accuracy"] is not None for p in points)
    assert sum(p["chosen"] for p in points) == 1
    best = max(p["task_accuracy"] for p in points)  # the gate (refusal >= 0) passes everything
    chosen = record["chosen"]
    assert chosen["task_accuracy"] == best
    config = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert config["parameters"] == {"top_k": chosen["top_k"]}
    assert config["models"][0]["parameters"]["weight"] == chosen["weight"]
    for name in ("sweep.png", "sweep-heatmap.png", "model.safetensors", "README.md"):
        assert (out / name).stat().st_size > 1000, name
    assert list(work.iterdir()) == []
