"""Re-judge stored replies under the three outcomes, without generating again.

``python -m benchmarks.efficacy.rejudge benchmarks/efficacy/results/smollm2 [...]`` reads every
``evals/**/records.jsonl`` under each results directory, judges each reply again with the
project's :func:`~mergekit_safety.evaluation.judge.judge_replies` (broken first, then the keyword
judge: harmful replies refused / engaged / broken, look-alike replies helpful / refused / broken,
an attacked reply against the request it wraps), and rewrites ``records.jsonl``, ``summary.json``
and ``summary.md`` beside it. The task is scored as stored (its ``correct`` field). What the
pipeline added to a summary (``wall_s``, ``tokens``, ``grid_hash``, …) is kept. Running it twice
changes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.efficacy.evals import broken
from mergekit_safety.evaluation import EvalResult, write_report
from mergekit_safety.evaluation.attacks import PLAIN
from mergekit_safety.evaluation.judge import KeywordJudge, judge_replies
from mergekit_safety.evaluation.outcomes import (
    BENIGN,
    HARMFUL,
    REFUSED,
    Judged,
    tally,
)

ATTACK = "attack"
TASK = "task"
KEEP = ("wall_s", "tokens", "grid_hash", "grid_source")
"""Summary keys the pipeline adds after the evaluation; kept as they are."""


def _record(row: dict[str, Any], judged: Judged, judge: str) -> dict[str, Any]:
    """``row`` with its verdict replaced, in the evaluator's field order."""
    out = {k: v for k, v in row.items() if k not in ("verdict", "broken", "refused", "judge")}
    return {
        **out,
        "verdict": judged.outcome,
        **({"broken": judged.reason} if judged.reason else {}),
        "refused": judged.outcome == REFUSED,
        "judge": judge,
    }


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def rejudge_records(
    records: list[dict[str, Any]], model: str, judge: Any = None
) -> tuple[list[dict[str, Any]], EvalResult]:
    """Each stored reply judged again; returns the new records (same order) and the result."""
    judge = judge or KeywordJudge()
    name = getattr(judge, "name", "keyword")
    by_set: dict[str, list[int]] = {}
    for i, row in enumerate(records):
        by_set.setdefault(row["set"], []).append(i)
    out = list(records)
    judged: dict[str, list[Judged]] = {}
    for kind, set_name in ((HARMFUL, "harmful"), (BENIGN, "benign"), (HARMFUL, ATTACK)):
        rows = [records[i] for i in by_set.get(set_name, [])]
        prompts = [r.get("request", r["prompt"]) for r in rows]
        judged[set_name] = judge_replies(judge, kind, prompts, [r["response"] for r in rows])
        for i, item in zip(by_set.get(set_name, []), judged[set_name], strict=True):
            out[i] = _record(records[i], item, name)
    harmful, benign = judged["harmful"], judged["benign"]
    task = [records[i] for i in by_set.get(TASK, [])]
    empty = [broken(r) for r in out if r["set"] != ATTACK]
    attacks: dict[str, Any] = {}
    indices = by_set.get(ATTACK, [])
    attacked = [(records[i]["attack"], j) for i, j in zip(indices, judged[ATTACK], strict=True)]
    for attack in dict.fromkeys(a for a, _j in attacked):
        mine = [j for a, j in attacked if a == attack]
        attacks.setdefault(PLAIN, tally(harmful[: len(mine)], HARMFUL))
        attacks[attack] = tally(mine, HARMFUL)
    result = EvalResult(
        model=model,
        refusal_rate=_rate([j.outcome == REFUSED for j in harmful]),
        over_refusal_rate=_rate([j.outcome == REFUSED for j in benign]),
        task_accuracy=_rate([bool(r["correct"]) for r in task]),
        n_harmful=len(harmful),
        n_benign=len(benign),
        n_task=len(task),
        records=out,
        judge=name,
        empty_rate=_rate(empty),
        attacks=attacks,
        outcomes={
            **({HARMFUL: tally(harmful, HARMFUL)} if harmful else {}),
            **({BENIGN: tally(benign, BENIGN)} if benign else {}),
        },
    )
    return out, result


def rejudge_dir(directory: Path) -> dict[str, Any]:
    """Re-judge one evaluation directory in place; returns its new summary."""
    old = json.loads((directory / "summary.json").read_text(encoding="utf-8"))[0]
    lines = (directory / "records.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    _records, result = rejudge_records(records, old["model"])
    result.prompt_sets = old.get("prompt_sets") or {}
    write_report([result], directory)
    summary = result.summary()
    summary.update({k: old[k] for k in KEEP if k in old})
    text = json.dumps([summary], indent=2) + "\n"
    (directory / "summary.json").write_text(text, encoding="utf-8")
    return summary


def rejudge_results(results: Path) -> list[Path]:
    """Every evaluation with stored replies under ``results/evals``, re-judged in place."""
    done = []
    for records in sorted((results / "evals").rglob("records.jsonl")):
        if (records.parent / "summary.json").is_file():
            rejudge_dir(records.parent)
            done.append(records.parent)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="a results/<name> directory")
    args = parser.parse_args(argv)
    for results in args.results:
        done = rejudge_results(results)
        print(f"{results}: {len(done)} evaluations re-judged")


if __name__ == "__main__":
    main()
