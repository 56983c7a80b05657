"""Model card: the "Safety evaluation" section and Hub metadata, idempotent, mergekit keys kept."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from mergekit_safety.card import (  # noqa: E402
    BEGIN,
    END,
    SafetyEvaluation,
    merge_metadata,
    replace_section,
    split_front_matter,
    update_card,
)
from mergekit_safety.cli import main  # noqa: E402
from mergekit_safety.errors import ConfigError  # noqa: E402

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
        meta, body = split_front_matter(card)
        card = "---\n" + yaml.safe_dump({**meta, **extra_meta}) + "---\n" + body
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
    assert "| /models/aligned | aligned (base_model) | 0.950 | 0.100 | 0.300 | 0.050 |" in body
    assert "| /models/finetuned | fine-tuned | 0.200 |" in body
    assert "| **my-merge** | **merged (safe_linear): this model** | 0.850 | 0.125 | 0.700 |" in body
    assert "refusal rate >= 0.8: **passed**" in body
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


def test_split_front_matter():
    assert split_front_matter("# title\n") == ({}, "# title\n")
    assert split_front_matter("---\na: 1\n---\nbody\n") == ({"a": 1}, "body\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        split_front_matter("---\na: [1\n---\nbody\n")


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
