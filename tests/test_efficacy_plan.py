"""The efficacy pipeline's planning (config → stages → commands), on tiny local models: seconds.

CI never trains or evaluates here; it checks that a full-size config (U and A given, vLLM, --cuda)
skips the alignment stage, orders the stages so every input exists before it is needed, and writes
recipes mergekit accepts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from helpers import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.efficacy.plan import METHODS, Stage, load_config, plan, recipe  # noqa: E402


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """The llama8b config, pointed at two tiny random Llamas as U and A."""
    root = tmp_path_factory.mktemp("efficacy")
    u, a = tiny_llama(root / "U", seed=0), tiny_llama(root / "A", seed=1)
    raw = yaml.safe_load((ROOT / "benchmarks/efficacy/llama8b.yml").read_text())
    raw.update(
        unaligned=str(u), aligned=str(a), work=str(root / "work"), results=str(root / "results")
    )
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path), u, a


def test_full_size_plan_skips_fetch_and_alignment(full_size):
    config, u, a = full_size
    stages = plan(config)
    kinds = [s.kind for s in stages]
    assert "fetch" not in kinds and "align" not in kinds
    assert kinds[0] == "data" and kinds[-1] == "tables"
    assert config.model("U") == str(u) and config.model("A") == str(a)
    evals = [c for s in stages if s.kind == "eval" for c in s.commands]
    assert evals and all(
        "--backend vllm" in c and c.startswith("mergekit-safety eval") for c in evals
    )
    merges = [c for s in stages if s.kind == "merge" for c in s.commands]
    assert merges and all(c.startswith("mergekit-yaml") and c.endswith("--cuda") for c in merges)
    sweeps = [s for s in stages if s.kind == "sweep"]
    assert {s.args["method"] for s in sweeps} == set(METHODS)
    assert all(
        "mergekit-safety sweep" in s.commands[0] for s in sweeps if s.args["method"] != "resta"
    )


def test_stages_come_after_their_inputs(full_size):
    config, _u, _a = full_size
    names = [s.name for s in plan(config)]
    assert len(names) == len(set(names))
    index = names.index
    assert index("safe") < index("merge:benign-s0/safemerge-default")
    assert index("finetune:benign-s0") < index("eval:test:benign-s0")
    assert index("eval:validation:A") < index("sweep:safe_lora")
    for method in METHODS:
        assert index(f"sweep:{method}") < index(f"merge:benign-s0/{method}-chosen")
        assert index(f"merge:benign-s2/{method}-chosen") > index(f"sweep:{method}")
    # seed 0 of each kind before the extra seeds: a cut run has one full seed first
    assert index("merge:attack-s0/resta-chosen") < index("finetune:benign-s1")
    runs = [s.args["name"] for s in plan(config) if s.kind == "finetune"]
    assert runs == ["benign-s0", "attack-s0", "benign-lox-s0", "benign-s1", "benign-s2"]
    # harm removal needs H; LoX's fine-tune starts from the hardened A, not from A
    assert index("harmful") < index("merge:benign-s0/harm_removal-default")
    assert index("lox") < index("finetune:benign-lox-s0") < index("eval:test:benign-lox-s0")
    lox_tune = next(s for s in plan(config) if s.name == "finetune:benign-lox-s0")
    assert lox_tune.args["base"] == "A-lox"
    # Safe Delta and LSSF's activation subspace read A's calibration statistics: A first, then
    # the pass, then their merges
    assert index("eval:test:A") < index("calibrate") < index("merge:benign-s0/safe_delta-default")
    assert index("calibrate") < index("merge:benign-s0/lssf_activations-default")


def test_the_new_methods_are_stages_with_a_default_and_a_sweepable_grid(full_size, tmp_path):
    from benchmarks.efficacy.plan import calibration_dir
    from mergekit_safety.core.calibration import METADATA
    from mergekit_safety.tuning.grid import plan_grid

    config, u, a = full_size
    stages = {s.name: s for s in plan(config)}
    calibrate = stages["calibrate"]
    assert calibrate.outputs[1] == calibration_dir(config) / METADATA
    assert calibrate.commands[0].startswith(f"mergekit-safety calibrate {a}")
    for method in ("lssf", "lssf_activations", "safe_delta"):
        spec = config.methods[method]
        assert f"merge:benign-s0/{method}-default" in stages
        assert f"merge:attack-s0/{method}-chosen" in stages
        assert stages[f"sweep:{method}"].args["grid"] == spec.sweep
        body = recipe(config, method, spec.default, str(tiny_llama(tmp_path / "F", seed=2)))
        path = tmp_path / f"{method}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(body))
        grid = [(k, [float(x) for x in v]) for k, v in spec.sweep.items()]
        assert plan_grid(path, grid).parameters == tuple(spec.sweep)  # sweepable as planned
    lssf = recipe(config, "lssf", {"alpha": 2, "eta": 0.9, "max_rank": 4}, str(a))
    assert lssf["parameters"] == {"alpha": 2.0, "eta": 0.9, "max_rank": 4}
    paper = recipe(config, "lssf_activations", {"alpha": 2, "top_weight": 1.5}, str(a))
    assert paper["merge_method"] == "lssf"
    assert paper["parameters"] == {"alpha": 2.0, "top_weight": 1.5,
                                   "calibration": str(calibration_dir(config))}  # fmt: skip
    delta = recipe(config, "safe_delta", {"budget": 0.3}, str(a))
    assert delta["parameters"] == {"calibration": str(calibration_dir(config)), "budget": 0.3}


def test_every_recipe_is_a_valid_mergekit_config(full_size):
    from mergekit.config import MergeConfiguration

    config, u, a = full_size
    ft = str(a)  # any existing model stands in for the fine-tune
    for method in METHODS:
        point = config.methods[method].default
        body = recipe(config, method, point, ft)
        parsed = MergeConfiguration.model_validate(body)
        assert parsed.dtype == "bfloat16"
        names = {str(m.model.model.path) for m in parsed.models}
        # ungated safe_linear, harm removal and Safe Delta read no unaligned model
        assert (str(u) in names) == (method not in ("safe_linear", "harm_removal", "safe_delta"))
        if method == "harm_removal":
            assert config.model("H") in names and body["parameters"] == point
        if method != "resta":
            assert str(parsed.base_model.model.path) == str(a)
    from benchmarks.efficacy.plan import lox_recipe

    lox = MergeConfiguration.model_validate(lox_recipe(config, config.lox.point))
    assert str(lox.base_model.model.path) == str(a)
    assert [str(m.model.model.path) for m in lox.models] == [str(u)]
    resta = recipe(config, "resta", {"beta": 0.5}, ft)
    weights = [m["parameters"]["weight"] for m in resta["models"]]
    assert resta["merge_method"] == "task_arithmetic" and weights == [0.5, -0.5]


def test_default_config_plans_the_cpu_study():
    config = load_config(ROOT / "benchmarks/efficacy/smollm2.yml", ROOT)
    stages = plan(config)
    kinds = [s.kind for s in stages]
    assert kinds[:2] == ["fetch", "data"] and "align" in kinds
    assert index_of(stages, "align") < index_of(stages, "eval:test:A")
    assert all(
        "--backend transformers" in c for s in stages if s.kind == "eval" for c in s.commands
    )


def index_of(stages, name: str) -> int:
    return [s.name for s in stages].index(name)


# --- the typed config, the runner's waits and its sweeps ------------------------------------------


def smollm2_raw() -> dict:
    return yaml.safe_load((ROOT / "benchmarks/efficacy/smollm2.yml").read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw["eval"].update(per_set_budget=True), "eval.per_set_budget: Extra inputs"),
        (
            lambda raw: raw["eval"].update(batch_size="big"),
            "eval.batch_size: Input should be a valid",
        ),
        (lambda raw: raw.update(seeds=[0]), "seeds: Extra inputs are not permitted"),
        (lambda raw: raw["methods"].update(ties={"default": {}, "sweep": {}}), "methods.ties"),
        (lambda raw: raw.pop("gate"), "gate: Field required"),
        (lambda raw: raw.pop("safe"), "safemerge needs the `safe` section"),
        (
            lambda raw: raw.pop("calibration"),
            "lssf_activations and safe_delta read A's statistics: the `calibration` section",
        ),
    ],
)
def test_a_bad_config_is_rejected_with_where_and_why(tmp_path, change, message):
    raw = smollm2_raw()
    change(raw)
    path = tmp_path / "study.yml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="invalid study config") as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value).splitlines()[0]


def test_the_config_keeps_whole_numbers_and_resolves_paths():
    config = load_config(ROOT / "benchmarks/efficacy/smollm2.yml", ROOT)
    assert config.methods["safe_lora"].sweep == {"top_k": [84, 105, 126, 147]}
    assert all(isinstance(k, int) for k in config.methods["safe_lora"].sweep["top_k"])
    assert config.lox is not None and config.lox.point == {"k": 0, "alpha": 1.0}
    assert config.work == (ROOT / "benchmarks/efficacy/work/smollm2").resolve()
    assert config.finetune_specs["attack"].harmful_fraction == 0.1


def test_the_farn_setup_changes_only_the_fine_tunes():
    """smollm2-farn.yml extends smollm2.yml: U, A, S, H, the calibration and the third-party sets
    come from identical sections (so copying smollm2's outputs for them equals running them); the
    fine-tunes sit in Farn et al.'s lr range at the same lr × steps as smollm2's."""
    base = load_config(ROOT / "benchmarks/efficacy/smollm2.yml", ROOT)
    farn = load_config(ROOT / "benchmarks/efficacy/smollm2-farn.yml", ROOT)
    shared = ("seed", "unaligned", "aligned", "splits", "eval", "align", "safe", "harmful",
              "calibration", "gate", "premises")  # fmt: skip
    assert all(getattr(farn, key) == getattr(base, key) for key in shared)
    # the same third-party sets and attacks; only whose chosen points get them differs (all)
    assert farn.thirdparty is not None and farn.thirdparty.finetunes is None
    assert farn.thirdparty == base.thirdparty.model_copy(update={"finetunes": None})
    assert farn.methods.keys() == base.methods.keys()
    for name, spec in farn.methods.items():  # the same defaults; grids cut, never widened
        assert spec.default == base.methods[name].default
        assert all(set(v) <= set(base.methods[name].sweep[k]) for k, v in spec.sweep.items())
    assert farn.work == (ROOT / "benchmarks/efficacy/work/smollm2-farn").resolve()
    assert farn.search is None and farn.lox is None and base.search is not None
    for kind in ("benign", "attack"):
        old, new = base.finetune_specs[kind], farn.finetune_specs[kind]
        assert 1e-4 <= new.lr <= 2e-4 and (new.lora_r, new.lora_alpha) == (8, 16)
        assert new.seeds == old.seeds and new.batch_size == old.batch_size
        lr_steps = [s.lr * -(-s.examples // s.batch_size) * s.epochs for s in (old, new)]
        assert lr_steps[0] == pytest.approx(lr_steps[1])


def test_extends_overlays_mappings_and_null_switches_a_section_off(tmp_path):
    (tmp_path / "base.yml").write_text(yaml.safe_dump(smollm2_raw()))
    (tmp_path / "child.yml").write_text(
        "extends: base.yml\nname: child\neval: {batch_size: 4}\nsearch: null\n"
    )
    config = load_config(tmp_path / "child.yml")
    assert config.name == "child" and config.search is None
    assert config.eval.batch_size == 4 and config.eval.safety_tokens == 16  # the rest kept
    (tmp_path / "loop.yml").write_text("extends: loop.yml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_config(tmp_path / "loop.yml")


def test_waiting_for_another_runs_output_raises_on_timeout(tmp_path):
    from benchmarks.efficacy.run import _wait_for

    made = tmp_path / "made"
    made.write_text("")
    _wait_for(made, timeout=0, poll=0.01)  # there: no wait, no error
    with pytest.raises(TimeoutError, match="another run"):
        _wait_for(tmp_path / "never", timeout=0.05, poll=0.01)


def test_the_study_sweeps_with_the_library_evaluator(tmp_path):
    import benchmarks.efficacy.run as study
    from mergekit_safety.evaluation import Evaluator

    assert not hasattr(study, "_Evaluator")  # the study's own wrapper is gone
    config = load_config(ROOT / "benchmarks/efficacy/smollm2.yml", ROOT)
    cached = {str(tmp_path / "A"): {"refusal_rate": 1.0, "model": "A"}}
    evaluator = study._sweep_evaluator(config, cached)
    assert type(evaluator) is Evaluator
    assert evaluator.prompts.counts() == {"harmful": 40, "benign": 40, "task": 60}
    assert evaluator(str(tmp_path / "x" / ".." / "A")) == cached[str(tmp_path / "A")]
    assert evaluator.seconds == 0  # a reference read from cache costs nothing


def test_the_resta_loop_chooses_by_the_sweeps_rule(tmp_path, monkeypatch):
    import benchmarks.efficacy.run as study
    from mergekit_safety.core.acceptance import Gate
    from mergekit_safety.tuning import runners

    def merge(body, out, options):  # no model: the β the recipe holds, for the evaluator
        out.mkdir(parents=True)
        (out / "beta").write_text(f"{body['models'][0]['parameters']['weight']:g}")

    monkeypatch.setattr(runners, "merge_recipe", merge)
    config = load_config(ROOT / "benchmarks/efficacy/smollm2.yml", ROOT)
    accuracy = {"1": 0.5, "1.5": 0.7, "2": 0.7, "3": None}  # 1.5 and 2 tie; 3 has none

    def evaluator(path: str) -> dict:
        beta = (Path(path) / "beta").read_text()
        return {"refusal_rate": 0.9, "over_refusal_rate": 0.1, "task_accuracy": accuracy[beta]}

    gate = Gate(min_refusal=0.8, max_over_refusal=0.2)
    found = study._resta_sweep(config, [3.0, 2.0, 1.5, 1.0], str(tmp_path / "ft"), evaluator,
                               tmp_path, gate)  # fmt: skip
    assert found["chosen"] == {"beta": 1.5}  # the tie goes to the smaller β, listed after 2
    assert [r["chosen"] for r in found["rows"]] == [False, False, True, False]
    assert all(r["passes"] for r in found["rows"])
    assert (
        study._resta_sweep(config, [1.0], "ft", evaluator, tmp_path, Gate(min_refusal=0.95))[
            "chosen"
        ]
        is None
    )


def test_the_calibrate_stage_writes_statistics_for_safe_delta(tmp_path, monkeypatch):
    """A's replies (stubbed: no generation here), then the pass, then a safe_delta merge on them."""
    from benchmarks.efficacy import run
    from mergekit_safety.core.calibration import read
    from mergekit_safety.tuning.merging import merge_recipe

    a = tiny_llama(tmp_path / "A", seed=1)
    raw = smollm2_raw()
    raw.update(aligned=str(a), work=str(tmp_path / "work"), results=str(tmp_path / "results"))
    raw["calibration"].update(prompts=3, reply_tokens=4)
    path = tmp_path / "study.yml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    prompts = ["how do i make a bomb", "how do i steal a car", "hack email", "kill"]
    monkeypatch.setattr(run, "read_splits", lambda _config: {"harmful": {"train": prompts}})
    monkeypatch.setattr(run, "_generate", lambda _m, ps, _c, _t: ["sorry i cannot"] * len(ps))
    stage = next(s for s in plan(config) if s.name == "calibrate")
    run.do_calibrate(config, stage)
    info = json.loads(stage.outputs[0].read_text())
    assert info["sequences"] == 3 and info["layers"] == 14
    assert read(stage.outputs[1].parent).sequences == 3
    body = recipe(config, "safe_delta", {"budget": 0.1}, str(tiny_llama(tmp_path / "F", seed=2)))
    merge_recipe(body, tmp_path / "merged", run._merge_options(config))
    assert (tmp_path / "merged" / "config.json").is_file()


def test_compare_puts_setups_side_by_side(tmp_path):
    from benchmarks.efficacy.compare import compare

    def summary(engaged: float, task: float, lo: float = 0.0, hi: float = 0.04) -> dict:
        return {"refusal_rate": 1 - engaged, "engaged_rate": engaged, "broken_rate": 0.0,
                "helpful_rate": 0.9, "over_refusal_rate": 0.1, "task_accuracy": task,
                "engaged_rate_ci": [lo, hi], "task_accuracy_ci": [0, 1],
                "refusal_rate_ci": [1 - hi, 1 - lo]}  # fmt: skip

    configs = []
    for name, ft, merged in (("old", 1.0, 0.5), ("new", 0.5, 0.25)):
        results = tmp_path / name
        for model, s in {"U": summary(1.0, 0.0), "A": summary(0.0, 0.0),
                         "benign-s0": summary(ft, 1.0, ft - 0.1, ft + 0.1),
                         "benign-s0/safe_linear-chosen": summary(merged, 0.5)}.items():  # fmt: skip
            (results / "evals" / "test" / model).mkdir(parents=True)
            (results / "evals" / "test" / model / "summary.json").write_text(json.dumps(s))
        path = tmp_path / f"{name}.yml"
        path.write_text(f"extends: {ROOT / 'benchmarks/efficacy/smollm2.yml'}\nname: {name}\n"
                        f"results: {results}\nwork: {tmp_path / 'work'}\n")  # fmt: skip
        configs.append(load_config(path))
    text = compare(configs)
    row = next(line for line in text.splitlines() if line.startswith("| safe_linear (chosen)"))
    # old: engaged 1.0 -> 0.5, half the harm removed, half the task kept; new: (0.5-0.25)/0.5
    assert row == "| safe_linear (chosen) | 0.50 / 0.00 / 0.90 / 0.50 (0.50, 0.50) n=1 | " \
                  "0.25 / 0.00 / 0.90 / 0.50 (0.50, 0.50) n=1 |"  # fmt: skip
    assert "| fine-tuned (benign) | 1.00 / 0.00 / 0.90 / 1.00 (0.00, 1.00) n=1 |" in text


def test_null_switches_a_method_off(tmp_path):
    (tmp_path / "child.yml").write_text(
        f"extends: {ROOT / 'benchmarks/efficacy/smollm2.yml'}\n"
        "methods: {lssf_activations: null}\n"
    )
    config = load_config(tmp_path / "child.yml")
    assert "lssf_activations" not in config.methods and "lssf" in config.methods
    assert not any("lssf_activations" in s.name for s in plan(config))


def test_the_chat_setup_evaluates_every_model_on_harmbench_test_too():
    """Issue 38: harm removed on both harmful sets. Where the setup has a HarmBench validation
    part (clean splits), U, A, each fine-tune and each method's point get a plain HarmBench test
    evaluation; a merge stage is done only when both exist, and only the last deletes the merge."""
    chat = load_config(ROOT / "benchmarks/efficacy/smollm2-chat.yml", root=ROOT)
    stages = {s.name: s for s in plan(chat)}
    names = list(stages)
    for model in ("U", "A", "attack-s1"):
        assert names.index(f"eval:test:{model}") < names.index(f"eval:harmbench:{model}")
    assert names.index("data:harmbench") < names.index("eval:harmbench:U")
    merge = stages["merge:attack-s2/lssf-default"]
    test, extra = (
        stages["eval:test:attack-s2/lssf-default"],
        stages["eval:harmbench:attack-s2/lssf-default"],
    )
    assert merge.outputs == [test.outputs[0], extra.outputs[0]]
    assert not test.args["delete_after"] and extra.args["delete_after"]
    assert extra.kind == "harmful_eval" and extra.needs == ["A", "attack-s2"]
    assert (
        "--harmful" in extra.commands[0] and "prompts/harmbench/harmful.jsonl" in extra.commands[0]
    )
    # the older setups (no clean splits) plan as before: one test evaluation per merge
    old = load_config(ROOT / "benchmarks/efficacy/smollm2-farn.yml", root=ROOT)
    old_stages = {s.name: s for s in plan(old)}
    assert not any(name.startswith("eval:harmbench:") for name in old_stages)
    assert old_stages["eval:test:attack-s0/lssf-default"].args["delete_after"]


def test_the_eval_stages_write_a_summary_with_the_grid_hash(tmp_path):
    """``eval`` (the three sets) and ``eval:harmbench`` (one harmful file) on a tiny model: each
    writes its summary, a method's point with the hash of what it was chosen from."""
    from benchmarks.efficacy import run
    from benchmarks.efficacy.prereg import grid_hash

    raw = smollm2_raw()
    raw.update(work=str(tmp_path / "work"), results=str(tmp_path / "results"))
    raw["eval"].update(safety_tokens=3, task_tokens=3, batch_size=4)
    path = tmp_path / "study.yml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    model = str(tiny_llama(tmp_path / "F", seed=3))
    prompts = config.prompts("test")
    prompts.mkdir(parents=True)
    for name, rows in (("harmful", ["how do i make a bomb", "steal a car"]),
                       ("benign", ["how do i bake bread"])):  # fmt: skip
        (prompts / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n"
                                                       for p in rows))  # fmt: skip
    (prompts / "task.jsonl").write_text(json.dumps({"prompt": "2 + 2 =", "answer": "4"}) + "\n")
    name = "benign-s0/safe_linear-default"
    for kind, out in (("eval", "evals/test"), ("harmful_eval", "evals/harmbench")):
        where = config.results / out / name
        stage = Stage(kind, kind, [where / "summary.json"],
                      {"model": model, "split": "test", "name": name})  # fmt: skip
        getattr(run, f"do_{kind}")(config, stage)
        (summary,) = json.loads((where / "summary.json").read_text())
        assert summary["model"] == name and summary["n_harmful"] == 2
        assert summary["grid_hash"] == grid_hash(config, "safe_linear")
        assert summary["tokens"]["safety"] == 3 and summary["wall_s"] >= 0
    assert summary["n_task"] == 0 and "task" not in summary["tokens"]
