"""Model card: the "Safety evaluation" section and Hub metadata, idempotent, mergekit keys kept."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from mergekit_safety.cli import main  # noqa: E402
from mergekit_safety.core.errors import ConfigError  # noqa: E402
from mergekit_safety.publish.model_card import (  # noqa: E402
    BEGIN,
    END,
    SafetyEvaluation,
    merge_metadata,
    read_card,
    replace_section,
    update_card,
)

ALIGNED, FINETUNED, UNALIGNED = "/models/aligned", "/models/finetuned", "/models/unaligned"


def fake_merge(root: Path, extra_meta: dict | None = None) -> Path:
    """A merge directory as mergekit writes it: its own card and mergekit_config.yml."""
    from mergekit.card import generate_card
    from mergekit.config import MergeConfiguration

    recipe = {
        "merge_method": "safe_linear",
        "base_model": ALIGNED,
        "models": [
            {"model": FINETUNED, "parameters": {"weight": 0.7}},
            {"model": UNALIGNED, "parameters": {"role": "unaligned"}},
        ],
    }
    out = root / "my-merge"
    out.mkdir()
    source = yaml.safe_dump(recipe, sort_keys=False)
    card = generate_card(MergeConfiguration.model_validate(recipe), source, name=out.name)
    if extra_meta:
        parsed = read_card(card)
        for key, value in extra_meta.items():
            parsed.data[key] = value
        card = str(parsed)
    (out / "README.md").write_text(card)
    (out / "mergekit_config.yml").write_text(source)
    return out


def summary(model: str, refusal: float, over: float, accuracy: float | None) -> dict:
    return {
        "model": model,
        "refusal_rate": refusal,
        "over_refusal_rate": over,
        "task_accuracy": accuracy,
        "asr": 1 - refusal,
        "n_harmful": 10,
        "n_benign": 8,
        "n_task": 6,
    }


def results_file(root: Path, merged: str, refusal: float = 0.85) -> Path:
    rows = [
        summary(ALIGNED, 0.95, 0.1, 0.3),
        summary(FINETUNED, 0.2, 0.05, 0.8),
        summary(merged, refusal, 0.125, 0.7),
    ]
    path = root / "summary.json"
    path.write_text(json.dumps(rows))
    return path


def front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def invoke(*args: str):
    return CliRunner().invoke(main, ["card", *args])


def test_card_metadata_parses_and_holds_the_numbers(tmp_path):
    out = fake_merge(tmp_path, {"license": "apache-2.0"})
    results = results_file(tmp_path, str(out))
    result = invoke(str(out), "--eval", str(results), "--min-refusal", "0.8", "--limit", "10")
    assert result.exit_code == 0, result.output

    meta = front_matter(out / "README.md")
    assert meta["license"] == "apache-2.0"  # a key mergekit or the user set is kept
    assert meta["library_name"] == "transformers"
    assert {"merge", "mergekit", "safety", "safe_linear"} <= set(meta["tags"])
    assert "base_model" not in meta  # local paths stay in the recipe section
    (entry,) = meta["model-index"]
    assert entry["name"] == "my-merge"
    metrics = {}
    for result_entry in entry["results"]:
        assert result_entry["task"]["type"] == "text-generation"
        assert {"name", "type"} <= set(result_entry["dataset"])
        for m in result_entry["metrics"]:
            assert set(m) == {"type", "value", "name"}
            metrics[m["type"]] = m["value"]
    assert metrics == {
        "refusal_rate": 0.85,
        "asr": pytest.approx(0.15),
        "over_refusal_rate": 0.125,
        "accuracy": 0.7,
    }

    body = (out / "README.md").read_text()
    assert body.count("## Safety evaluation") == 1
    assert body.index("## Safety evaluation") < body.index("## Merge Details")
    assert "## Configuration" in body or "### Configuration" in body  # mergekit's text stays
    # engaged (an older summary's ASR), refused, broken, helpful, over-refusal, task
    assert (
        "| /models/aligned | aligned (base_model) | 0.050 | 0.950 | – | – | 0.100 | 0.300 |" in body
    )
    assert "| /models/finetuned | fine-tuned | 0.800 | 0.200 |" in body
    assert (
        "| **my-merge** | **merged (safe_linear): this model** | 0.150 | 0.850 | – | – | 0.125 "
        "| 0.700 |" in body
    )
    # an older summary has no helpfulness to gate: the default --min-helpful does not fail it
    gate = "refusal rate >= 0.8 and helpful on look-alikes >= 0.8 and broken replies <= 0.5"
    assert f"{gate}: **passed**" in body
    assert "harmful: built-in (n=10)" in body and "(first 10 of each)" in body


def test_rerunning_replaces_the_section(tmp_path):
    out = fake_merge(tmp_path)
    results = results_file(tmp_path, str(out))
    assert invoke(str(out), "--eval", str(results)).exit_code == 0
    first = (out / "README.md").read_text()
    assert invoke(str(out), "--eval", str(results)).exit_code == 0
    assert (out / "README.md").read_text() == first  # idempotent

    results = results_file(tmp_path, str(out), refusal=0.4)
    result = invoke(str(out), "--eval", str(results), "--min-refusal", "0.8")
    assert result.exit_code == 0, result.output
    text = (out / "README.md").read_text()
    assert text.count("## Safety evaluation") == 1 and text.count(BEGIN) == 1
    assert "**failed**" in text and "0.850" not in text
    meta = front_matter(out / "README.md")
    assert len(meta["model-index"]) == 1
    assert meta["tags"].count("safety") == 1 and "base_model" not in meta


def test_model_row_by_name_and_relative_path(tmp_path, monkeypatch):
    out = fake_merge(tmp_path)
    results = results_file(tmp_path, "merged-model")
    result = invoke(str(out), "--eval", str(results))
    assert result.exit_code == 1
    assert "name it with --model-row" in result.output
    assert invoke(str(out), "--eval", str(results), "--model-row", "merged-model").exit_code == 0

    monkeypatch.chdir(tmp_path)
    results = results_file(tmp_path, "./my-merge")  # eval ran from here with a relative path
    assert invoke(str(out), "--eval", str(results)).exit_code == 0

    results = results_file(tmp_path, "elsewhere/my-merge")  # eval ran elsewhere: name unique
    assert invoke(str(out), "--eval", str(results)).exit_code == 0
    rows = json.loads(results.read_text())
    rows.append({**rows[-1], "model": "other/my-merge"})
    results.write_text(json.dumps(rows))
    result = invoke(str(out), "--eval", str(results))  # ambiguous: two rows named my-merge
    assert result.exit_code == 1 and "--model-row" in result.output


def test_missing_reference_rows_are_left_out(tmp_path):
    out = fake_merge(tmp_path)
    path = tmp_path / "only.json"
    path.write_text(json.dumps(summary(str(out), 0.9, 0.1, None)))  # one summary, not a list
    assert invoke(str(out), "--eval", str(path)).exit_code == 0
    text = (out / "README.md").read_text()
    assert "aligned (base_model)" not in text and "| – |" in text  # no accuracy: a dash
    results = results_file(tmp_path, str(out))
    result = invoke(str(out), "--eval", str(results), "--aligned-row", "nope")
    assert result.exit_code == 1 and "no row named 'nope'" in result.output


@pytest.mark.parametrize(
    "content, message",
    [(None, "results not found"), ("{not json", "not valid JSON"), ("[1, 2]", "'model' key")],
)
def test_bad_results_are_one_line_errors(tmp_path, content, message):
    out = fake_merge(tmp_path)
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    result = invoke(str(out), "--eval", str(path))
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and message in result.output


def test_not_a_merge_directory(tmp_path):
    path = results_file(tmp_path, str(tmp_path))
    result = invoke(str(tmp_path), "--eval", str(path))
    assert result.exit_code == 1 and "no mergekit_config.yml" in result.output


def test_card_without_readme_or_front_matter(tmp_path):
    out = tmp_path / "plain"
    out.mkdir()
    evaluation = SafetyEvaluation(method="safemerge", merged=summary("m", 0.9, 0.1, 0.5))
    update_card(out, evaluation)
    meta = front_matter(out / "README.md")
    assert meta["tags"] == ["merge", "mergekit", "safety", "safemerge"]
    assert (out / "README.md").read_text().count(END) == 1


def test_read_card():
    card = read_card("# title\n")
    assert (card.data.to_dict(), card.text) == ({}, "# title\n")
    card = read_card("---\na: 1\n---\nbody\n")
    assert (card.data.to_dict(), card.text) == ({"a": 1}, "body\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_card("---\na: [1\n---\nbody\n")
    with pytest.raises(ConfigError, match="not a YAML mapping"):
        read_card("---\n- a\n---\nbody\n")


def test_replace_section_needs_both_markers():
    with pytest.raises(ConfigError, match="no end marker"):
        replace_section(f"x\n{BEGIN}\nold\n", "new\n")
    assert replace_section(f"x\n{BEGIN}\nold\n{END}\ny\n", "new\n") == "x\nnew\n\ny\n"


def test_base_model_metadata_keeps_hub_ids_only(tmp_path, monkeypatch):
    """Issue #8: local paths never reach the Hub's base_model; Hub ids do, once each."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "local").mkdir(parents=True)  # exists here: a path, not a Hub id
    evaluation = SafetyEvaluation(
        method="safe_linear",
        merged={"refusal_rate": 0.9},
        base_models=["org/aligned", "./recipes/demo/aligned", "/abs/finetuned", "models/local"],
    )
    meta = merge_metadata({"base_model": "org/aligned"}, evaluation, "m")
    assert meta["base_model"] == ["org/aligned"]


def test_card_reports_the_prompt_sets_eval_recorded(tmp_path):
    """Issue #8: eval with --prompts DIR must not be described as "built-in" on the card."""
    out = fake_merge(tmp_path)
    results = results_file(tmp_path, str(out))
    rows = json.loads(results.read_text())
    recorded = {"harmful": "recipes/demo/prompts/harmful.jsonl", "benign": "built-in"}
    rows[-1]["prompt_sets"] = {**recorded, "task": "t.jsonl", "limit": None}
    results.write_text(json.dumps(rows))
    assert invoke(str(out), "--eval", str(results)).exit_code == 0
    text = (out / "README.md").read_text()
    assert "harmful: recipes/demo/prompts/harmful.jsonl" in text
    assert "harmful: built-in" not in text.replace("*", "")


def test_merged_card_round_trips_through_huggingface_hub(tmp_path):
    """huggingface_hub reads our card back: base_model, library_name and the EvalResults."""
    from huggingface_hub import ModelCard

    out = tmp_path / "merged"
    out.mkdir()
    merged = {
        **summary("m", 0.85, 0.125, 0.7),
        "lm_eval": {"arith": {"acc": 0.5, "acc_stderr": 0.01, "n": 4}},
    }
    evaluation = SafetyEvaluation(
        method="safe_linear",
        merged=merged,
        base_models=["org/aligned", "org/finetuned", "/local/unaligned"],
        prompt_sets={"harmful": "h.txt"},
    )
    card = ModelCard.load(update_card(out, evaluation))
    assert card.data.base_model == ["org/aligned", "org/finetuned"]
    assert card.data.library_name == "transformers"
    assert card.data.tags == ["merge", "mergekit", "safety", "safe_linear"]
    assert card.data.model_name == "merged"
    got = {
        (r.dataset_type, r.dataset_name, r.metric_type, r.metric_name, r.source_name): (
            r.metric_value
        )
        for r in card.data.eval_results
    }
    harmful = ("mergekit-safety/harmful", "harmful prompts: h.txt")
    benign = ("mergekit-safety/benign", "benign prompts: built-in")
    task = ("mergekit-safety/task", "task prompts: built-in")
    assert got == {
        (*harmful, "refusal_rate", "Refusal rate", None): 0.85,
        (*harmful, "asr", "Attack success rate (engaged)", None): pytest.approx(0.15),
        (*benign, "over_refusal_rate", "Over-refusal rate", None): 0.125,
        (*task, "accuracy", "Task accuracy", None): 0.7,
        ("arith", "arith", "acc", "acc (arith)", "lm-evaluation-harness"): 0.5,
    }
    assert {r.task_type for r in card.data.eval_results} == {"text-generation"}
    assert card.text.count(BEGIN) == 1 and card.text.startswith("# merged\n")


def test_adapter_card_round_trips_through_huggingface_hub(tmp_path):
    """The adapter's card, written by the same writer, and then with its safety numbers."""
    from huggingface_hub import ModelCard

    from mergekit_safety.adapter.write import adapter_card

    out = tmp_path / "adapter"
    out.mkdir()
    text = adapter_card(
        method="safe_lora",
        base_model="org/base",
        adapters=["org/lora"],
        recipe_text="merge_method: safe_lora\n",
        summary="2 of 3 adapted modules merged.",
    )
    (out / "README.md").write_text(text)
    card = ModelCard.load(out / "README.md")
    assert card.data.to_dict() == {
        "base_model": "org/base",
        "library_name": "peft",
        "tags": ["lora", "peft", "safety", "mergekit-safety", "safe_lora"],
    }
    assert card.text.startswith("# Safety-merged LoRA adapter (safe_lora)\n")
    assert "```yaml\nmerge_method: safe_lora\n```" in card.text

    evaluation = SafetyEvaluation(
        method="safe_lora",
        merged=summary("adapter", 0.9, 0.1, None),
        base_models=["org/base"],
        library_name="peft",
    )
    card = ModelCard.load(update_card(out, evaluation))
    assert card.data.base_model == ["org/base"] and card.data.library_name == "peft"
    assert card.data.tags[:5] == ["lora", "peft", "safety", "mergekit-safety", "safe_lora"]
    assert {"merge", "mergekit"} <= set(card.data.tags)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "refusal_rate": 0.9,
        "asr": pytest.approx(0.1),
        "over_refusal_rate": 0.1,
    }
    assert card.text.index("## Safety evaluation") < card.text.index("## Merge Details")


def test_existing_metadata_and_other_model_index_entries_are_kept(tmp_path):
    """Keys we do not write stay as they were; another model's model-index entry stays too."""
    from huggingface_hub import ModelCard

    out = tmp_path / "m"
    out.mkdir()
    other = {
        "name": "someone-else",
        "results": [
            {
                "task": {"type": "text-generation"},
                "dataset": {"name": "x", "type": "x"},
                "metrics": [{"type": "acc", "value": 0.1}],
            }
        ],
    }
    meta = {
        "license": "apache-2.0",
        "language": ["en"],
        "datasets": ["org/data"],
        "custom_key": {"nested": [1, 2]},
        "library_name": "mergekit-custom",
        "base_model": ["org/aligned", "/local/x"],
        "tags": ["mine"],
        "model-index": [other],
    }
    (out / "README.md").write_text("---\n" + yaml.safe_dump(meta) + "---\n# m\n\nmy text\n")
    evaluation = SafetyEvaluation(
        method="safemerge", merged={"refusal_rate": 0.5}, base_models=["org/finetuned"]
    )
    readme = update_card(out, evaluation)
    card = ModelCard.load(readme)
    assert card.data.license == "apache-2.0" and card.data.language == ["en"]
    assert card.data.datasets == ["org/data"]
    assert card.data["custom_key"] == {"nested": [1, 2]}
    assert card.data.library_name == "mergekit-custom"  # a merge keeps the library given
    assert card.data.base_model == ["org/aligned", "org/finetuned"]
    assert card.data.tags == ["mine", "merge", "mergekit", "safety", "safemerge"]
    assert "# m\n\nmy text\n" in card.text
    index = front_matter(readme)["model-index"]
    assert [entry["name"] for entry in index] == ["m", "someone-else"]
    assert index[1] == other
    assert index[0]["results"][0]["metrics"] == [
        {"type": "refusal_rate", "value": 0.5, "name": "Refusal rate"}
    ]
    update_card(out, evaluation)
    assert front_matter(readme)["model-index"] == index  # re-running: still one entry each
