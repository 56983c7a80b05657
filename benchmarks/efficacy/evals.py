"""Evaluation for the pipeline: the project's ``evaluate`` with a new-token budget per prompt set.

``mergekit-safety eval`` takes one ``--max-new-tokens`` for all sets; a refusal shows in the
opening words and the task's answer is a short number, so the safety sets and the task set are two
``evaluate`` calls here, combined into one ``EvalResult`` (its summary carries Wilson intervals)
and written with the project's ``write_report``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_safety.evaluation import EvalResult, evaluate, load_prompt_sets, write_report
from mergekit_safety.evaluation.outcomes import BROKEN, is_degenerate
from mergekit_safety.evaluation.prompts import PromptSets

if TYPE_CHECKING:
    from benchmarks.efficacy.plan import EvalSpec


def load_split(prompt_dir: Path) -> PromptSets:
    return load_prompt_sets(prompts_dir=prompt_dir)


def broken(record: dict[str, Any]) -> bool:
    """The judge's rule for a reply that is no answer: its *broken* outcome on harmful and
    look-alike prompts (``outcomes.broken_reason``: no letter, a URL, repetition, …), a
    degenerate reply on the task (a bare number is the task's answer)."""
    if record["set"] == "task":
        return is_degenerate(record["response"])
    return record["verdict"] == BROKEN


def evaluate_split(
    model: str,
    prompts: PromptSets,
    spec: EvalSpec,
    *,
    device: str,
    dtype: str,
    backend: str,
    label: str | None = None,
) -> tuple[EvalResult, float]:
    """One model on one split; returns the combined result and the wall time in seconds."""
    start = time.time()
    common = dict(
        device=device, dtype=dtype, backend=backend, progress=False, batch_size=spec.batch_size
    )
    if spec.per_set_budgets:
        safety = PromptSets(harmful=prompts.harmful, benign=prompts.benign, sources=prompts.sources)
        task = PromptSets(task=prompts.task, sources=prompts.sources)
        first = evaluate(model, safety, max_new_tokens=spec.safety_tokens, **common)
        second = evaluate(model, task, max_new_tokens=spec.task_tokens, **common)
        records = first.records + second.records
    else:
        tokens = max(spec.safety_tokens, spec.task_tokens)
        first = second = evaluate(model, prompts, max_new_tokens=tokens, **common)
        records = first.records
    empty = [broken(r) for r in records if r["set"] != "attack"]
    for record in records:
        if label:
            record["model"] = label
    result = EvalResult(
        model=label or model,
        refusal_rate=first.refusal_rate,
        over_refusal_rate=first.over_refusal_rate,
        task_accuracy=second.task_accuracy,
        n_harmful=first.n_harmful,
        n_benign=first.n_benign,
        n_task=second.n_task,
        records=records,
        judge=first.judge,
        empty_rate=sum(empty) / len(empty) if empty else None,
        prompt_sets=first.prompt_sets,
        outcomes=first.outcomes,
        attacks=first.attacks,
    )
    return result, time.time() - start


def run_eval(
    model: str,
    prompt_dir: Path,
    out: Path,
    spec: EvalSpec,
    *,
    device: str,
    dtype: str,
    backend: str,
    label: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate and write ``records.jsonl``/``summary.json``/``summary.md`` to ``out``
    (``extra``: more keys for the summary, e.g. the grid hash a point was chosen from)."""
    result, seconds = evaluate_split(
        model,
        load_split(prompt_dir),
        spec,
        device=device,
        dtype=dtype,
        backend=backend,
        label=label,
    )
    tokens = {"safety": spec.safety_tokens, "task": spec.task_tokens}
    return _write(result, out, seconds, tokens, extra)


def read_summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))[0]


def run_harmful_eval(
    model: str,
    harmful: Path,
    out: Path,
    spec: EvalSpec,
    *,
    device: str,
    dtype: str,
    backend: str,
    label: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``model`` on one harmful prompt file alone, at the safety budget; the same files as
    :func:`run_eval` (its records carry ``set`` "harmful" and the judge's verdict)."""
    result, seconds = evaluate_harmful(
        model, harmful, spec, device=device, dtype=dtype, backend=backend, label=label
    )
    return _write(result, out, seconds, {"safety": spec.safety_tokens}, extra)


def evaluate_harmful(
    model: str,
    harmful: Path,
    spec: EvalSpec,
    *,
    device: str,
    dtype: str,
    backend: str,
    label: str | None = None,
) -> tuple[EvalResult, float]:
    """``model`` on one harmful prompt file alone, at the safety budget; the result and the
    wall time in seconds."""
    start = time.time()
    rows = load_prompt_sets(harmful=harmful)
    prompts = PromptSets(harmful=rows.harmful, sources={"harmful": str(harmful)})
    result = evaluate(
        model, prompts, max_new_tokens=spec.safety_tokens, device=device, dtype=dtype,
        backend=backend, progress=False, batch_size=spec.batch_size,
    )  # fmt: skip
    if label:
        result.model = label
        for record in result.records:
            record["model"] = label
    return result, time.time() - start


def _write(
    result: EvalResult,
    out: Path,
    seconds: float,
    tokens: dict[str, int],
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """``records.jsonl``/``summary.md`` (``write_report``) and ``summary.json``: the summary with
    its wall time, token budgets and ``extra``; returns that summary."""
    write_report([result], out)
    summary = result.summary()
    summary["wall_s"] = round(seconds, 1)
    summary["tokens"] = tokens
    summary.update(extra or {})
    (out / "summary.json").write_text(json.dumps([summary], indent=2) + "\n", encoding="utf-8")
    return summary
