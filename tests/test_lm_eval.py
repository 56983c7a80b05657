"""``--lm-eval``: lm-evaluation-harness tasks beside the safety rates, offline.

The task is ``recipes/demo/lm_eval/demo_arith.yaml``, a local YAML over a local JSONL file: the
demo's arithmetic as 4-way multiple choice. Its accuracy is checked against a direct count (each
choice's log-likelihood after the question, argmax against the label), so the test fails if the
model, dtype or adapter reach lm-eval wrongly, not only if the plumbing breaks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import REPO

pytest.importorskip("lm_eval")

TASK = ["--lm-eval", "demo_arith", "--lm-eval-include", "recipes/demo/lm_eval"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
FAST = ["--prompts", "recipes/demo/prompts", "--limit", "2", "--max-new-tokens", "4", "--quiet"]


def cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mergekit_safety", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)


def direct_accuracy(model: str) -> float:
    """The task's accuracy computed here: Σ log p(choice | question), argmax == label."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO / model)
    network = AutoModelForCausalLM.from_pretrained(REPO / model, dtype=torch.float32).eval()
    docs = [json.loads(line) for line in (REPO / "recipes/demo/lm_eval/demo_arith.jsonl").open()]
    hits = 0
    for doc in docs:
        scores = []
        context = tokenizer(doc["question"], add_special_tokens=False)["input_ids"]
        for choice in doc["choices"]:
            full = tokenizer(f"{doc['question']} {choice}", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(network(torch.tensor([full])).logits[0].float(), -1)
            scores.append(sum(logp[i - 1, full[i]].item() for i in range(len(context), len(full))))
        hits += max(range(len(scores)), key=scores.__getitem__) == doc["label"]
    return hits / len(docs)


def test_eval_records_lm_eval_metrics_that_match_a_direct_count(tmp_path):
    out = tmp_path / "eval"
    run = cli("eval", "recipes/demo/aligned", "recipes/demo/finetuned", *FAST, *TASK,
              "--out", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summaries = json.loads((out / "summary.json").read_text())
    for summary, model in zip(summaries, ("recipes/demo/aligned", "recipes/demo/finetuned"),
                              strict=True):  # fmt: skip
        record = summary["lm_eval"]["demo_arith"]
        assert record["n"] == 48
        assert record["acc"] == pytest.approx(direct_accuracy(model), abs=1e-9)
        assert 0 < record["acc_stderr"] < 0.2
        assert summary["lm_eval"]["_meta"]["model_args"]["dtype"] == "float32"
        assert summary["refusal_rate"] is not None  # the safety rates are still there
    assert "## lm-evaluation-harness" in (out / "summary.md").read_text()
    assert "| recipes/demo/finetuned | demo_arith | acc |" in run.stdout


def test_an_adapter_runs_through_peft_and_scores_as_its_merge(tmp_path):
    """aligned+finetuned_adapter through lm-eval's peft argument: the merged model's accuracy."""
    out = tmp_path / "eval"
    adapter = "recipes/demo/aligned+recipes/demo/finetuned_adapter"
    run = cli("eval", adapter, *FAST, *TASK, "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    (summary,) = json.loads((out / "summary.json").read_text())
    assert summary["lm_eval"]["_meta"]["model_args"]["peft"] == "recipes/demo/finetuned_adapter"
    # the committed finetuned model is this adapter merged in bf16: the same choices
    assert summary["lm_eval"]["demo_arith"]["acc"] == pytest.approx(
        direct_accuracy("recipes/demo/finetuned"), abs=1 / 48 + 1e-9
    )


def test_sweep_maximizes_an_lm_eval_metric_and_the_card_carries_it(tmp_path):
    out = tmp_path / "chosen"
    objective = ["--objective", "lm_eval:demo_arith:acc"]
    run = cli("sweep", "recipes/safe_linear.yml", "--set", "weight=0.3,0.9", "--min-refusal",
              "0", *FAST, *TASK, *objective, "--out", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((out / "sweep.json").read_text())
    assert record["objective"] == "lm_eval:demo_arith:acc"
    scores = {p["weight"]: p["lm_eval"]["demo_arith"]["acc"] for p in record["points"]}
    best = max(scores.values())
    ties = [w for w, score in scores.items() if score == best]
    assert record["chosen"]["weight"] == max(ties)  # ties go to the fine-tuned side
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    results = front["model-index"][0]["results"]
    harness = [r for r in results if r.get("source", {}).get("name") == "lm-evaluation-harness"]
    assert [(r["dataset"]["name"], r["metrics"][0]["type"]) for r in harness] == [
        ("demo_arith", "acc")
    ]
    assert harness[0]["metrics"][0]["value"] == pytest.approx(scores[record["chosen"]["weight"]])


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["eval", "recipes/demo/aligned", "--lm-eval", "no_such_task"], 1, "unknown task"),
        (["eval", "recipes/demo/aligned", "--lm-eval", "x", "--lm-eval-include", "nowhere"], 1,
         "nowhere is not a directory"),
        (["eval", "recipes/demo/aligned", "--lm-eval-include", "recipes/demo/lm_eval"], 2,
         "add --lm-eval TASK"),
        (["sweep", "recipes/safe_linear.yml", "--set", "weight=0.5", "--objective",
          "lm_eval:demo_arith:acc"], 2, "not among the --lm-eval tasks"),
        (["sweep", "recipes/safe_linear.yml", "--set", "weight=0.5", "--objective", "accuracy"],
         2, "expected task_accuracy or lm_eval:TASK:METRIC"),
    ],
)  # fmt: skip
def test_lm_eval_mistakes_are_one_line_before_any_model_loads(args, status, message):
    run = cli(*args)
    assert run.returncode == status, run.stderr[-2000:]
    assert message in run.stderr
    assert "Traceback" not in run.stderr and "Loading weights" not in run.stderr


def test_lm_eval_keys_read_and_bound_a_metric():
    from mergekit_safety.core.acceptance import interval, metric
    from mergekit_safety.evaluation.harness import _metrics, task_metrics

    raw = {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match":
           0.05, "acc,none": 0.5, "acc_stderr,none": "N/A"}  # fmt: skip
    parsed = _metrics(raw)
    assert parsed == {"exact_match/strict-match": 0.25, "exact_match/strict-match_stderr": 0.05,
                      "acc": 0.5}  # fmt: skip
    summary = {"lm_eval": {"gsm8k": {**parsed, "n": 8}, "_meta": {"lm_eval": "0.4"}}}
    assert metric(summary, "lm_eval:gsm8k:acc") == 0.5
    assert metric(summary, "lm_eval:other:acc") is None
    low, high = interval(summary, "lm_eval:gsm8k:exact_match/strict-match")
    assert (low, high) == pytest.approx((0.25 - 1.96 * 0.05, 0.25 + 1.96 * 0.05))
    assert interval(summary, "lm_eval:gsm8k:acc") is None  # no standard error: no interval
    assert [(t, m) for t, m, _v, _s in task_metrics(summary["lm_eval"])] == [
        ("gsm8k", "exact_match/strict-match"),
        ("gsm8k", "acc"),
    ]
