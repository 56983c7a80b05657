"""The keyword judge against hand labels of this study's own responses.

``python -m benchmarks.efficacy.judge_check sample --config C --n 160`` writes responses to label
(``results/.../judge_labels.json``, label field empty); a person reads each and fills
``label`` with ``refusal``, ``compliance`` or ``degenerate``. ``... agree --config C`` re-judges
every labelled response with the *current* judge and writes agreement and the confusion matrix
(``judge_agreement.json``): fixes go into the judge, never into the labels.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from benchmarks.efficacy.plan import load_config
from mergekit_safety.evaluation.judge import KeywordJudge, is_degenerate, is_non_reply

LABELS = ("refusal", "compliance", "degenerate")


def verdict(judge: KeywordJudge, response: str, empty=is_non_reply) -> str:
    """The evaluator's verdict on a harmful/benign reply (``empty`` = its no-reply rule)."""
    if empty(response):
        return "degenerate"
    return "refusal" if judge.is_refusal(response) else "compliance"


def sample(results: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` harmful/benign responses spread over the evaluated models, deterministic."""
    pool = []
    for records in sorted((results / "evals" / "test").rglob("records.jsonl")):
        for line in records.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["set"] in ("harmful", "benign"):
                pool.append(row)
    rng = random.Random(seed)
    by_model: dict[str, list] = {}
    for row in pool:
        by_model.setdefault(row["model"], []).append(row)
    picked, models = [], sorted(by_model)
    while len(picked) < n and any(by_model.values()):
        for model in models:
            if by_model[model] and len(picked) < n:
                picked.append(by_model[model].pop(rng.randrange(len(by_model[model]))))
    return [
        {k: row[k] for k in ("model", "set", "prompt", "response")} | {"label": ""}
        for row in picked
    ]


def agreement(labelled: list[dict], empty=is_non_reply) -> dict:
    judge = KeywordJudge()
    rows = [r for r in labelled if r.get("label") in LABELS]
    matrix = Counter((r["label"], verdict(judge, r["response"], empty)) for r in rows)
    agree = sum(v for (a, b), v in matrix.items() if a == b)
    wrong = [
        {
            "label": r["label"],
            "judge": verdict(judge, r["response"], empty),
            "set": r["set"],
            "response": r["response"][:160],
        }
        for r in rows
        if verdict(judge, r["response"], empty) != r["label"]
    ]
    from mergekit_safety.core.stats import wilson_interval

    return {
        "n": len(rows),
        "agreement": agree / len(rows) if rows else None,
        "agreement_ci": list(wilson_interval(agree, len(rows))) if rows else None,
        "confusion": {f"{a}->{b}": matrix[(a, b)] for a in LABELS for b in LABELS},
        "labels": dict(Counter(r["label"] for r in rows)),
        "disagreements": wrong,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=("sample", "agree"))
    parser.add_argument("--config", required=True)
    parser.add_argument("--n", type=int, default=160)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    path = config.results / "judge_labels.json"
    if args.action == "sample":
        if path.exists():
            raise SystemExit(f"{path} exists: labels are never overwritten")
        path.write_text(json.dumps(sample(config.results, args.n), indent=1) + "\n")
        return
    labelled = json.loads(path.read_text())
    result = agreement(labelled)
    before = agreement(labelled, empty=is_degenerate)  # the judge before the bare-number fix
    result["before_fix"] = {k: v for k, v in before.items() if k != "disagreements"}
    out = config.results / "judge_agreement.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "disagreements"}, indent=2))


if __name__ == "__main__":
    main()
