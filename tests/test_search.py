"""``mergekit-safety search``: the space, the in-memory trial, the study's determinism, the CLI.

The chosen recipe is plain mergekit: ``mergekit-yaml`` on it reproduces the chosen model, and the
trial's in-memory merge of that point, bit for bit. A resumed search equals an uninterrupted one;
a Ray search equals a serial one with the same seed and --parallel.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, cli_in_process, click_line, write_recipe, yaml_in_process
from safetensors.torch import load_file

pytest.importorskip("optuna")

from mergekit_safety.core.acceptance import Gate  # noqa: E402
from mergekit_safety.core.errors import ConfigError  # noqa: E402
from mergekit_safety.tuning.engine import Outcome, tune  # noqa: E402
from mergekit_safety.tuning.optuna_sampler import OptunaSampler  # noqa: E402
from mergekit_safety.tuning.space import SEARCHED, Dimension, check_space, parse_param  # noqa: E402
from mergekit_safety.tuning.study import Budget, SearchPlan, finished, open_study  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "PYTHONPATH": str(REPO)}  # fmt: skip
DEMO = ["--prompts", "recipes/demo/prompts", "--limit", "4", "--max-new-tokens", "8"]


# --- the space ----------------------------------------------------------------------------------


def test_shorthand_forms():
    assert parse_param("weight=0:1") == Dimension("weight", 0.0, 1.0)
    assert parse_param("threshold=0.1:0.6:0.05").step == 0.05
    assert parse_param("weight=0.01:1:log").log
    layered = parse_param("weight=0:1@4/self_attn,mlp")
    assert (layered.anchors, layered.filters) == (4, ("self_attn", "mlp"))
    assert parse_param("weight=0:1@3").filters == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("weight", "expected NAME=LOW:HIGH"),
        ("weight=0:1@1/mlp", "a whole number from 2"),
        ("weight=a:1", "not a number"),
    ],
)
def test_malformed_shorthand_is_one_line(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_param(text)


def gated_recipe(family, tmp_path, **parameters) -> Path:
    recipe = {
        "merge_method": "safe_linear",
        "base_model": str(family["aligned"]),
        "models": [{"model": str(family["finetuned"]), "parameters": {"weight": 0.7}},
                   {"model": str(family["unaligned"]), "parameters": {"role": "unaligned"}}],
        "parameters": {"threshold": 0.35, **parameters},
        "dtype": "float32",
    }  # fmt: skip
    return write_recipe(tmp_path / "recipe.yml", recipe)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["bogus=0:1"], "cannot search 'bogus'"),
        (["threshold=0:1@2/mlp"], "threshold is recipe-wide"),
        (["weight=0:2"], "outside \\[0, 1\\]"),
        (["threshold=-0.5:0.5"], "search range of parameter 'threshold'"),
        (["top_k=1.5:4"], "whole numbers"),
        (["weight=0.8:0.2"], "low must be below high"),
        (["threshold=0.1:0.5", "top_k=1:4"], "are alternatives"),
        (["weight=0:1", "weight=0:0.5"], "given twice"),
    ],
)
def test_space_refusals_name_the_problem(family, tmp_path, params, message):
    recipe = gated_recipe(family, tmp_path)
    with pytest.raises(ConfigError, match=message):
        check_space([parse_param(p) for p in params], recipe)


def test_space_yaml_and_the_recipe_value_off_the_filters(family, tmp_path):
    from mergekit_safety.tuning.space import load_space

    space_file = tmp_path / "space.yml"
    space_file.write_text(
        "weight: {low: 0, high: 1, anchors: 2, filters: [self_attn, mlp]}\n"
        "top_k: {low: 1, high: 8, int: true}\n"
    )
    space, _plan = check_space(load_space(space_file), gated_recipe(family, tmp_path))
    weight, top_k = space.dimensions
    assert weight.rest == 0.7, "the recipe's own weight covers the tensors no filter names"
    assert top_k.integer and top_k.step == 1
    assert space.keys() == ["weight.self_attn.0", "weight.self_attn.1", "weight.mlp.0",
                            "weight.mlp.1", "top_k"]  # fmt: skip
    params = dict(zip(space.keys(), [0.1, 0.2, 0.3, 0.4, 5], strict=True))
    assert weight.value(params) == [
        {"filter": "self_attn", "value": [0.1, 0.2]},
        {"filter": "mlp", "value": [0.3, 0.4]},
        {"value": 0.7},
    ]
    assert top_k.value(params) == 5
    bad = tmp_path / "bad.yml"
    bad.write_text("weight: {low: 0, hihg: 1}\n")
    with pytest.raises(ConfigError, match="unknown key 'hihg'"):
        load_space(bad)


def test_rest_is_searched_when_the_recipe_has_no_single_number(family, tmp_path):
    recipe = write_recipe(tmp_path / "r.yml", {
        "merge_method": "safe_linear", "base_model": str(family["aligned"]),
        "models": [{"model": str(family["finetuned"])}], "dtype": "float32"})  # fmt: skip
    space, _plan = check_space([parse_param("weight=0:1@2/mlp")], recipe)
    assert space.dimensions[0].rest == SEARCHED
    assert space.keys()[-1] == "weight.rest"


# --- the trial: in memory, and as mergekit-yaml writes it ----------------------------------------


def test_rendered_recipe_is_plain_mergekit_and_reproduces_the_trial(family, tmp_path):
    """The recipe of a per-layer point with top_k, run by mergekit-yaml, equals the in-memory
    trial merge (and the resident network's parameters) bit for bit."""
    from mergekit.options import MergeOptions

    from mergekit_safety.tuning.resident import ResidentMerge

    recipe_path = gated_recipe(family, tmp_path)
    space, sweep = check_space(
        [parse_param("weight=0:1@2/self_attn,mlp"), parse_param("top_k=1:6")], recipe_path
    )
    plan = SearchPlan(space, sweep)
    params = dict(zip(space.keys(), [0.15, 0.8, 0.55, 0.3, 4], strict=True))
    recipe = plan.recipe_for(params)
    assert "top_k" in recipe["parameters"] and "threshold" not in recipe["parameters"]
    resident = ResidentMerge(sweep.recipe, MergeOptions(quiet=True), device="cpu", dtype=None)
    merged = resident.apply(recipe)
    written = tmp_path / "recipe-point.yml"
    written.write_text(yaml.safe_dump(recipe, sort_keys=False))
    ran = yaml_in_process(written, tmp_path / "out")
    assert ran.returncode == 0, ran.stderr[-3000:]
    on_disk = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(on_disk) == set(merged)
    network = dict(resident.network.named_parameters())
    for name, tensor in on_disk.items():
        assert torch.equal(merged[name], tensor), name
        assert torch.equal(network[name].data, tensor.to(network[name].dtype)), name
    before = {k: v.clone() for k, v in merged.items()}
    again = resident.apply(plan.recipe_for({**params, "weight.mlp.0": 0.9}))
    assert any(not torch.equal(before[k], again[k]) for k in before), "a new point merges anew"


# --- the study: determinism, resume ---------------------------------------------------------------


class FakeRunner:
    """Scores from the recipe's numbers, deterministically: no model. Stops after ``stop`` points
    (the references are not counted)."""

    def __init__(self, stop: int | None = None):
        self.jobs = 0
        self.stop = stop

    @contextlib.contextmanager
    def open(self, template, evaluator, name, status=None):
        yield self

    def run(self, jobs):
        for job in jobs:
            if job.kind == "reference":
                yield Outcome(job, {"refusal_rate": 1.0, "task_accuracy": 0.5})
                continue
            if self.stop is not None and self.jobs >= self.stop:
                raise KeyboardInterrupt
            self.jobs += 1
            weights = job.recipe["models"][0]["parameters"]["weight"]
            values = [v for entry in weights for v in _as_list(entry["value"])]
            yield self.point(job, sum(values) / len(values))

    def point(self, job, mean: float) -> Outcome:
        """A point's outcome from its mean weight (the more fine-tune, the less refusal)."""
        return Outcome(job, {"refusal_rate": 1 - mean * 0.8, "over_refusal_rate": 0.05,
                             "task_accuracy": mean, "empty_rate": 0.0, "n_harmful": 50,
                             "n_benign": 50, "n_task": 50}, seconds=0.0)  # fmt: skip


def run_study(study, plan, runner, budget, gate):
    """The engine with the study's sampler (no output: the study is the record)."""
    tune(OptunaSampler(study, plan, budget, gate), runner, None, gate=gate, progress=False)
    return study


def _as_list(value):
    return value if isinstance(value, list) else [value]


def fake_plan(family, tmp_path) -> SearchPlan:
    recipe = gated_recipe(family, tmp_path)
    space, sweep = check_space([parse_param("weight=0:1@2/self_attn,mlp")], recipe)
    return SearchPlan(space, sweep)


def trials_of(study):
    return [(t.number, t.params, t.value, t.user_attrs["metrics"]) for t in finished(study)]


@pytest.mark.parametrize("parallel", [1, 3])
def test_a_resumed_search_equals_an_uninterrupted_one(family, tmp_path, parallel):
    plan = fake_plan(family, tmp_path)
    gate = Gate(min_refusal=0.5, max_over_refusal=0.2)
    whole = Budget(10, parallel, seed=7, startup_trials=3,
                   storage=f"sqlite:///{tmp_path}/whole.db", study_name="s")  # fmt: skip
    reference = run_study(open_study(plan, whole, gate), plan, FakeRunner(), whole, gate)
    cut = Budget(**{**whole.__dict__, "storage": f"sqlite:///{tmp_path}/cut.db"})
    with pytest.raises(KeyboardInterrupt):  # stopped in the middle of a batch
        run_study(open_study(plan, cut, gate), plan, FakeRunner(stop=4), cut, gate)
    resumed = run_study(open_study(plan, cut, gate), plan, FakeRunner(), cut, gate)
    expected = [(p, v, m) for _n, p, v, m in trials_of(reference)]
    assert [(p, v, m) for _n, p, v, m in trials_of(resumed)] == expected
    assert len(expected) == 10
    assert len(resumed.trials) > 10, "the stopped run's trials stay, marked failed"
    more = Budget(**{**cut.__dict__, "trials": 12})  # a larger budget continues the study
    assert (
        len(finished(run_study(open_study(plan, more, gate), plan, FakeRunner(), more, gate))) == 12
    )


def test_another_search_in_the_same_study_is_refused(family, tmp_path):
    plan = fake_plan(family, tmp_path)
    budget = Budget(2, storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    run_study(open_study(plan, budget, Gate(min_refusal=0.5)), plan, FakeRunner(), budget,
              Gate(min_refusal=0.5))  # fmt: skip
    with pytest.raises(ConfigError, match="is another search \\(its gate differ"):
        open_study(plan, budget, Gate(min_refusal=0.9))


def test_constraints_say_what_the_gate_says():
    gates = [Gate(min_refusal=0.9, max_over_refusal=0.2),
             Gate(max_engaged=0.1, min_helpful=0.8)]  # fmt: skip
    cases = [(0.9, 0.05, 0.1, 0.9, 0), (0.5, 0.3, 0.1, 0.9, 0), (0.9, 0.05, 0.3, 0.9, 0),
             (0.9, 0.05, 0.1, 0.5, 0), (0.9, 0.05, 0.1, 0.9, 0.8)]  # fmt: skip
    verdicts = []
    for refusal, engaged, over, helpful, broken in cases:
        summary = {"refusal_rate": refusal, "engaged_rate": engaged, "over_refusal_rate": over,
                   "helpful_rate": helpful, "empty_rate": broken}  # fmt: skip
        for gate in gates:
            feasible = all(c <= 0 for c in gate.constraints(summary))
            assert feasible == gate.passes(summary)
            verdicts.append(feasible)
    assert verdicts == [True, True, False, False, False, True, True, False, False, False]


# --- the command ----------------------------------------------------------------------------------


def test_search_without_optuna_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    ran = cli_in_process("search", "recipes/safe_linear.yml", "--param", "weight=0:1",
                         "--min-refusal", "0.5", "--out", "unused", cwd=REPO)  # fmt: skip
    assert click_line(ran) == (
        "Error: search needs Optuna: pip install optuna (in a clone of this repository: pip "
        "install -e '.[search]')"
    )


def test_search_needs_a_gate_and_disjoint_test_prompts(tmp_path):
    ran = cli_in_process("search", "recipes/safe_linear.yml", "--param", "weight=0:1",
                         "--out", tmp_path / "o", cwd=REPO)  # fmt: skip
    assert ran.returncode == 2 and "search chooses under a safety gate" in ran.stderr
    ran = cli_in_process("search", "recipes/safe_linear.yml", "--param", "weight=0:1",
                         "--min-refusal", "0.5", "--out", tmp_path / "o", "--prompts",
                         "recipes/demo/prompts", "--test-prompts", "recipes/demo/prompts",
                         cwd=REPO)  # fmt: skip
    assert "shares a prompt with the validation prompts" in click_line(ran)
    assert not (tmp_path / "o").exists()


def search_args(out: Path, *extra: object) -> list[str]:
    return ["search", "recipes/safe_linear_gated.yml", "--param", "weight=0:1@2/self_attn,mlp",
            "--trials", "4", "--startup-trials", "2", "--min-refusal", "0.5", *DEMO, "--out",
            str(out), "--quiet", *map(str, extra)]  # fmt: skip


def test_search_writes_a_plain_recipe_that_mergekit_yaml_reproduces(tmp_path):
    test_dir = tmp_path / "test-prompts"  # the second half of each demo set: disjoint
    test_dir.mkdir()
    for name in ("harmful", "benign", "task"):
        lines = (REPO / "recipes/demo/prompts" / f"{name}.jsonl").read_text().splitlines()
        (test_dir / f"{name}.jsonl").write_text("\n".join(lines[len(lines) // 2 :]) + "\n")
    ran = cli_in_process(*search_args(tmp_path / "out", "--test-prompts", test_dir), cwd=REPO)
    assert ran.returncode == 0, ran.stderr[-3000:]
    out = tmp_path / "out"
    record = json.loads((out / "search.json").read_text())
    assert record["trials_finished"] == 4 and len(record["trials"]) == 4
    assert record["chosen"]["number"] in [t["number"] for t in record["trials"] if t["passes"]]
    assert record["prompt_sets"]["counts"] == {"harmful": 4, "benign": 4, "task": 4}
    assert record["test_prompt_sets"]["counts"] == {"harmful": 4, "benign": 4, "task": 4}
    assert set(record["test"]) == {"chosen", "aligned", "finetuned"}
    assert "| chosen | test |" in (out / "search.md").read_text()
    for name in ("search.md", "search.png", "search-coefficients.png", "README.md"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "mergekit-safety search" in card and f"Trial {record['chosen']['number']} of 4" in card
    recipe = yaml.safe_load((out / "recipe.yml").read_text())
    weight = recipe["models"][0]["parameters"]["weight"]
    assert [entry.get("filter") for entry in weight] == ["self_attn", "mlp", None]
    again = yaml_in_process(out / "recipe.yml", tmp_path / "again", cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        out / "model.safetensors"
    ).read_bytes()


@pytest.mark.subprocess
def test_search_and_mergekit_yaml_as_commands(tmp_path):
    """The installed entry points in fresh interpreters (this checkout on the path)."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mergekit_safety", *search_args(out)]
    ran = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    yaml_cmd = [str(Path(sys.executable).with_name("mergekit-yaml")), str(out / "recipe.yml"),
                str(tmp_path / "again")]  # fmt: skip
    again = subprocess.run(yaml_cmd, cwd=REPO, env=ENV, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        out / "model.safetensors"
    ).read_bytes()


@pytest.mark.subprocess
def test_a_ray_search_equals_a_serial_one(tmp_path):
    pytest.importorskip("ray")
    records = {}
    for mode, extra in (("serial", []), ("ray", ["--ray", "--ray-workers", "2"])):
        out = tmp_path / mode
        command = [sys.executable, "-m", "mergekit_safety",
                   *search_args(out, "--parallel", "2", "--seed", "3"), *extra]  # fmt: skip
        ran = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True,
                             timeout=900)  # fmt: skip
        assert ran.returncode == 0, f"{mode}: {ran.stderr[-3000:]}"
        records[mode] = json.loads((out / "search.json").read_text())
    serial, ray = records["serial"], records["ray"]
    for record in (serial, ray):
        for trial in [*record["trials"], record["chosen"]]:
            trial.pop("seconds")  # wall time, the one thing that differs
    assert ray["trials"] == serial["trials"]
    assert serial["chosen"] is not None and ray["chosen"] == serial["chosen"]
    assert (tmp_path / "ray" / "recipe.yml").read_text() == (
        tmp_path / "serial" / "recipe.yml"
    ).read_text()


@pytest.mark.subprocess
def test_the_core_imports_neither_optuna_nor_ray():
    code = ("import sys, mergekit_safety.cli, mergekit_safety.cli.search, mergekit_safety.tuning."
            "study, mergekit_safety.tuning.runners, mergekit_safety.tuning.search_report\n"
            "print(sorted({'optuna', 'ray'} & set(sys.modules)))")  # fmt: skip
    ran = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip() == "[]"


def test_an_lm_eval_objective_runs_on_the_trial_in_memory(tmp_path):
    """lm-eval on a trial's resident network scores as lm-eval on the written chosen model."""
    pytest.importorskip("lm_eval")
    from mergekit_safety.evaluation import harness

    out = tmp_path / "out"
    ran = cli_in_process("search", "recipes/safe_linear.yml", "--param", "weight=0:1",
                         "--trials", "3", "--startup-trials", "2", "--min-refusal", "0",
                         "--prompts", "recipes/demo/prompts", "--limit", "2", "--max-new-tokens",
                         "4", "--lm-eval", "demo_arith", "--lm-eval-include",
                         "recipes/demo/lm_eval", "--objective", "lm_eval:demo_arith:acc",
                         "--out", out, "--quiet", cwd=REPO,
                         env={"HF_DATASETS_OFFLINE": "1"})  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    record = json.loads((out / "search.json").read_text())
    scores = [t["lm_eval"]["demo_arith"]["acc"] for t in record["trials"]]
    assert record["chosen"]["lm_eval"]["demo_arith"]["acc"] == max(scores)
    include = str(REPO / "recipes/demo/lm_eval")
    on_disk = harness.run_tasks(str(out), ["demo_arith"], include=include)
    assert on_disk["demo_arith"]["acc"] == record["chosen"]["lm_eval"]["demo_arith"]["acc"]


def test_the_command_continues_a_stored_study(tmp_path):
    """A rerun with a larger --trials on the same --storage keeps the trials it had; other
    prompts in the same study are refused."""
    storage = ["--storage", f"sqlite:///{tmp_path}/s.db"]
    first = cli_in_process(*search_args(tmp_path / "a", "--trials", "2", *storage), cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    had = json.loads((tmp_path / "a" / "search.json").read_text())["trials"]
    more = cli_in_process(*search_args(tmp_path / "a", "--trials", "3", "--overwrite", *storage),
                          cwd=REPO)  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    now = json.loads((tmp_path / "a" / "search.json").read_text())["trials"]
    assert [t["number"] for t in now] == [0, 1, 2]
    assert [(t["params"], t["task_accuracy"]) for t in now[:2]] == [
        (t["params"], t["task_accuracy"]) for t in had
    ]
    other = cli_in_process(*search_args(tmp_path / "b", *storage, "--limit", "3"), cwd=REPO)
    assert "is another search (its evaluation differ" in click_line(other)
