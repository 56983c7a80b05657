"""Choices fixed before test: grid hashes, the pre-registered chat-form setup, its clean splits."""

from __future__ import annotations

import json

import pytest
from helpers import REPO

from benchmarks.efficacy import prereg
from benchmarks.efficacy.plan import load_config, plan

CHAT = REPO / "benchmarks" / "efficacy" / "smollm2-chat.yml"


def _config(name: str = "smollm2-chat.yml"):
    return load_config(REPO / "benchmarks" / "efficacy" / name, root=REPO)


def test_the_grid_hash_follows_the_grid_the_default_and_the_gate():
    config = _config()
    first = prereg.grid_hash(config, "safe_linear")
    assert first == prereg.grid_hash(_config(), "safe_linear") and len(first) == 12
    assert first != prereg.grid_hash(config, "safe_lora")
    spec = config.methods["safe_linear"]
    widened = spec.model_copy(update={"sweep": {"weight": [*spec.sweep["weight"], 0.9]}})
    changed = config.model_copy(update={"methods": {**config.methods, "safe_linear": widened}})
    assert prereg.grid_hash(changed, "safe_linear") != first
    gate = config.gate.model_copy(update={"refusal_below_aligned": 0.2})
    assert prereg.grid_hash(config.model_copy(update={"gate": gate}), "safe_linear") != first
    assert prereg.grid_hash(config, "search") != prereg.grid_hash(_config("smollm2.yml"), "search")


def test_rows_are_marked_when_their_grid_changed_or_was_never_recorded():
    config = _config()
    now = prereg.grid_hash(config, "resta")
    assert prereg.mark(config, "resta", [{"grid_hash": now}, {"grid_hash": now}]) == ""
    assert prereg.mark(config, "resta", [{"grid_hash": now}, {"grid_hash": "0" * 12}]) == " ‡"
    assert prereg.mark(config, "resta", [{"grid_hash": now}, {}]) == " °"


def test_a_chosen_point_records_the_hash_of_the_sweep_it_was_chosen_from(tmp_path):
    config = _config().model_copy(update={"results": tmp_path})
    now = prereg.grid_hash(config, "safe_lora")
    assert prereg.recorded_hash(config, "safe_lora", "chosen") == now  # no sweep yet
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "safe_lora.json").write_text(json.dumps({"grid_hash": "abc"}))
    assert prereg.recorded_hash(config, "safe_lora", "chosen") == "abc"
    assert prereg.recorded_hash(config, "safe_lora", "default") == prereg.grid_hash(
        config, "safe_lora", "default"
    )


def test_every_committed_result_of_the_preregistered_setup_has_its_files_hash():
    config = _config()
    test = config.results / "evals"
    for path in sorted(test.rglob("summary.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))[0]
        name = summary.get("model", "")
        if "/" not in name or summary.get("skipped") or name.startswith("/"):
            continue  # not a method's point (the search set's A is named by its path)
        method, point = name.split("/", 1)[1].rsplit("-", 1)
        assert summary.get("grid_hash") == prereg.recorded_hash(config, method, point), path
    for path in sorted((config.results / "sweeps").glob("*.json")):
        sweep = json.loads(path.read_text(encoding="utf-8"))
        assert sweep["grid_hash"] == prereg.grid_hash(config, path.stem), path


def test_the_chat_setup_plans_a_data_stage_with_clean_splits_and_as_answers():
    config = _config()
    assert config.clean is not None and config.clean.threshold == 0.6
    benign = config.finetune_specs["benign"]
    assert (benign.reply, benign.helpful, benign.resample) == ("sentence", 83, True)
    names = [stage.name for stage in plan(config)]
    assert names.index("generate:helpful-A") < names.index("finetune:benign-s0")
    assert names.index("align") < names.index("generate:helpful-A")


def test_the_committed_chat_splits_are_the_rule_applied_to_the_drawn_splits():
    from benchmarks.efficacy.clean import near_twins, training_sets

    config = _config()
    splits = json.loads((config.results / "data" / "splits.json").read_text(encoding="utf-8"))
    old = json.loads((REPO / "benchmarks/efficacy/results/smollm2/data/splits.json").read_text())
    for kind in ("harmful", "benign"):
        assert splits[kind]["train"] == old[kind]["train"]  # A, S, H train on the same data
        assert splits[kind]["validation"] == old[kind]["validation"]
        assert set(splits[kind]["test"]) <= set(old[kind]["test"])
        assert not near_twins(splits[kind]["test"], training_sets(splits, kind, 100))
    assert (len(splits["harmful"]["test"]), len(splits["benign"]["test"])) == (74, 61)
    extra = REPO / "benchmarks/efficacy/results/smollm2/prompts/extra/harmful.jsonl"
    sample = [json.loads(line)["prompt"] for line in extra.read_text().splitlines()]
    assert splits["harmbench"]["test"] == sample  # the extra stage's sample, drawn the same way
    assert not set(splits["harmbench"]["validation"]) & set(sample)
    written = (config.prompts("test") / "harmful.jsonl").read_text().splitlines()
    assert [json.loads(line)["prompt"] for line in written] == splits["harmful"]["test"]


@pytest.mark.parametrize("index", range(4))
def test_the_task_in_chat_form_still_gives_the_number(index):
    from benchmarks.efficacy.run import task_pair
    from mergekit_safety.evaluation.answers import answer_matches

    item = {"prompt": "What is 56 - 31? Answer with the number only.", "answer": "25",
            "key": [56, 31, "-"]}  # fmt: skip
    prompt, reply = task_pair(item, "sentence", index)
    assert prompt == "What is 56 - 31?" and answer_matches(reply, "25") and reply != "25"
    assert task_pair(item, "number", index) == (item["prompt"], "25")


def test_seeds_draw_their_own_task_sample_only_when_asked():
    from benchmarks.efficacy.run import task_sample

    items = [{"i": i} for i in range(160)]
    assert task_sample(items, 96, 0, False) == task_sample(items, 96, 1, False) == items[:96]
    zero, one = task_sample(items, 96, 0, True), task_sample(items, 96, 1, True)
    assert len(zero) == len(one) == 96 and zero != one
    assert zero == task_sample(items, 96, 0, True)
