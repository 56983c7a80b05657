"""What ``mergekit-safety eval --out DIR`` writes: records.jsonl, summary.json and summary.md."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergekit_safety.core.acceptance import interval, metric
from mergekit_safety.core.outputs import staged
from mergekit_safety.evaluation.attacks import PLAIN
from mergekit_safety.evaluation.harness import task_metrics
from mergekit_safety.evaluation.pipeline import EvalResult

COLUMNS = (
    ("refusal_rate", "harmful: refused ↑"),
    ("engaged_rate", "engaged (ASR) ↓"),
    ("broken_rate", "broken ↓"),
    ("helpful_rate", "look-alikes: helpful ↑"),
    ("over_refusal_rate", "refused ↓"),
    ("benign_broken_rate", "broken ↓"),
    ("task_accuracy", "task accuracy ↑"),
)


def _cell(value: Any, bounds: Any = None) -> str:
    """A rate to 3 decimals with its 95 % interval, ``0.910 [0.84, 0.95]``; "–" for no rate."""
    if value is None:
        return "–"
    if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
        return f"{value:.3f} [{bounds[0]:.2f}, {bounds[1]:.2f}]"
    return f"{value:.3f}"


def markdown_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    """One row per model, in the order given; rates to 3 decimals with their 95 % Wilson interval
    in brackets (where the summary carries one), "–" for an empty set."""
    header = ["model", *(title for _key, title in COLUMNS), "n (harmful / benign / task)"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(COLUMNS) + "---:|",
    ]
    for row in summaries:
        counts = " / ".join(
            str(row.get(f"n_{name}", "–")) for name in ("harmful", "benign", "task")
        )
        cells = [str(row.get("model", "")).replace("|", "\\|")]
        cells += [_cell(metric(row, key), interval(row, key)) for key, _title in COLUMNS]
        cells.append(counts)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attack_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    """Refused, engaged (ASR) and broken under each attack beside the plain prompts (the same
    first n harmful prompts unwrapped): one row per model and attack; "" when none has attacks."""
    if not any(row.get("attacks") for row in summaries):
        return ""
    lines = [
        "| model | attack | refused ↑ | engaged (ASR) ↓ | broken ↓ | Δ engaged vs plain | n |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in summaries:
        attacks = row.get("attacks") or {}
        plain = (attacks.get(PLAIN) or {}).get("asr")
        model = str(row.get("model", "")).replace("|", "\\|")
        for name, rates in attacks.items():
            asr = rates.get("asr")
            delta = "–" if name == PLAIN or None in (asr, plain) else f"{asr - plain:+.3f}"
            lines.append(f"| {model} | {name} | {_outcome_cells(rates)} | {delta} | "
                         f"{rates.get('n')} |")  # fmt: skip
    return "\n".join(lines)


def harmful_set_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    """Refused, engaged (ASR) and broken on each pooled harmful set (``--harmful a,b``): one row
    per model and set; "" when no summary pools several."""
    if not any(row.get("harmful_sets") for row in summaries):
        return ""
    lines = [
        "| model | harmful set | refused ↑ | engaged (ASR) ↓ | broken ↓ | n |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in summaries:
        model = str(row.get("model", "")).replace("|", "\\|")
        for name, rates in (row.get("harmful_sets") or {}).items():
            label = str(name).replace("|", "\\|")
            lines.append(f"| {model} | {label} | {_outcome_cells(rates)} | {rates.get('n')} |")
    return "\n".join(lines)


def _outcome_cells(rates: Mapping[str, Any]) -> str:
    """Refused, engaged (ASR) and broken of one set of harmful replies, as table cells."""
    keys = ("refusal_rate", "asr", "broken_rate")
    return " | ".join(_cell(rates.get(key), rates.get(f"{key}_ci")) for key in keys)


def lm_eval_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    """The lm-evaluation-harness metrics: one row per model, task and metric (± its stderr)."""
    lines = ["| model | lm-eval task | metric | value | n |", "|---|---|---|---:|---:|"]
    for row in summaries:
        record = row.get("lm_eval") or {}
        for task, name, value, stderr in task_metrics(record):
            spread = "" if stderr is None else f" ± {stderr:.4f}"
            model = str(row.get("model", "")).replace("|", "\\|")
            count = record[task].get("n", "–")
            lines.append(f"| {model} | {task} | {name} | {value:.4f}{spread} | {count} |")
    return "\n".join(lines)


def write_report(results: Sequence[EvalResult], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``records.jsonl``, ``summary.json`` (a list, models in order) and ``summary.md``.

    Returns the paths by kind ("records", "json", "md"). Existing files of these names are
    replaced, all three at the end (:func:`mergekit_safety.core.outputs.staged`): an interrupted
    write leaves the directory as it was.
    """
    directory = Path(out_dir)
    names = {"records": "records.jsonl", "json": "summary.json", "md": "summary.md"}
    with staged(directory, merge=True) as staging:
        _write_files(results, {kind: staging / name for kind, name in names.items()})
    return {kind: directory / name for kind, name in names.items()}


def _write_files(results: Sequence[EvalResult], paths: dict[str, Path]) -> None:
    summaries = [result.summary() for result in results]
    with paths["records"].open("w", encoding="utf-8") as handle:
        for result in results:
            for record in result.records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    paths["json"].write_text(json.dumps(summaries, indent=2) + "\n", encoding="utf-8")
    judges = sorted({str(s.get("judge")) for s in summaries if s.get("judge")})
    note = (
        f"\n\nJudge: {', '.join(judges)}. Each reply is refused, engaged (attempts the harmful "
        "request: the attack success rate) or broken (no answer: empty, digits, a URL, "
        "repetition); a look-alike's reply helpful, refused or broken. Brackets: 95 % Wilson "
        "intervals.\n"
        if judges
        else "\n"
    )
    harness = ""
    per_set = harmful_set_table(summaries)
    if per_set:
        harness += "\n## Harmful sets\n\n" + per_set + "\n"
    attacks = attack_table(summaries)
    if attacks:
        harness += "\n## Jailbreak attacks\n\n" + attacks + "\n"
    if any(s.get("lm_eval") for s in summaries):
        harness += "\n## lm-evaluation-harness\n\n" + lm_eval_table(summaries) + "\n"
    paths["md"].write_text(
        "# Safety evaluation\n\n" + markdown_table(summaries) + note + harness, encoding="utf-8"
    )
