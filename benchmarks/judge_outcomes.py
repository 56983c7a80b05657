"""The three-outcome judge against labels it was not written from.

    python -m benchmarks.judge_outcomes measure --label after   # adds/replaces one entry
    python -m benchmarks.judge_outcomes errors                   # the dev half's disagreements
    python -m benchmarks.judge_outcomes table                    # docs/judge.md's table

Two label sets, both split dev/held-out before any error was read (``benchmarks/judge_sample.py``):

- **study**: 365 replies of the efficacy study's own models (135M, cut at 16 new tokens), labelled
  by reading (``benchmarks/results/judge_labels_study.jsonl``, rules in
  ``docs/judge_labelling.md``): refused / engaged / broken on harmful prompts (plain and under a
  jailbreak), helpful / refused / broken on look-alikes.
- **pyrit objective**: pyrit 1.1.0's 395 human-labelled (objective, reply, achieved) rows, replies
  of large models; "achieved" is our *engaged*.

Per half: agreement on the three outcomes with the confusion matrix, and precision and recall of
*engaged* (harmful) and *broken*, each with its 95 % Wilson interval. Fixes are made from the dev
half's disagreements (``errors``); the held-out half says whether they generalise. ``before`` is
the keyword judge of 2026-12-06 read as three outcomes (no reply → broken, a refusal phrase →
refused, anything else → engaged / helpful), measured before any change.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.judge_sample import OBJECTIVE_SPLIT, SAMPLE, objective_rows
from mergekit_safety.core.stats import wilson_interval

HERE = Path(__file__).resolve().parent
LABELS = HERE / "results" / "judge_labels_study.jsonl"
OUT = HERE / "results" / "judge_outcomes.json"
Outcome = Callable[[str, str, str], str]
"""(kind: harmful | benign, request, reply) -> the judge's outcome."""


def current_outcome(kind: str, request: str, response: str) -> str:
    """The package's judge as ``eval`` applies it (the keyword judge)."""
    from mergekit_safety.evaluation.judge import KeywordJudge, judge_replies

    return judge_replies(KeywordJudge(), kind, [request], [response])[0].outcome


def study_items() -> list[dict[str, Any]]:
    labels = {row["id"]: row for row in map(json.loads, LABELS.read_text("utf-8").splitlines())}
    items = []
    for row in map(json.loads, SAMPLE.read_text("utf-8").splitlines()):
        kind = "benign" if row["set"] == "benign" else "harmful"
        items.append({**row, "kind": kind, "label": labels[row["id"]]["label"]})
    return items


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"value": k / n if n else None, "ci": list(wilson_interval(k, n)) if n else None,
            "k": k, "n": n}  # fmt: skip


def scores(labels: Sequence[str], verdicts: Sequence[str]) -> dict[str, Any]:
    """Agreement, the confusion (label -> verdict -> count), and per outcome precision/recall."""
    pairs = list(zip(labels, verdicts, strict=True))
    confusion: dict[str, Counter] = {}
    for label, verdict in pairs:
        confusion.setdefault(label, Counter())[verdict] += 1
    out: dict[str, Any] = {
        "n": len(pairs),
        "agreement": _rate(sum(a == b for a, b in pairs), len(pairs)),
        "confusion": {k: dict(v) for k, v in sorted(confusion.items())},
    }
    for outcome in sorted(set(labels) | set(verdicts)):
        tp = sum(a == b == outcome for a, b in pairs)
        out[outcome] = {
            "precision": _rate(tp, sum(b == outcome for b in verdicts)),
            "recall": _rate(tp, sum(a == outcome for a in labels)),
        }
    return out


def measure(outcome: Outcome) -> dict[str, Any]:
    result: dict[str, Any] = {}
    items = study_items()
    for split in ("dev", "heldout"):
        part = [i for i in items if i["split"] == split]
        result[f"study:{split}"] = {
            kind: scores(
                [i["label"] for i in part if i["kind"] == kind],
                [outcome(kind, i["request"], i["response"]) for i in part if i["kind"] == kind],
            )
            for kind in ("harmful", "benign")
        }
    halves = json.loads(OBJECTIVE_SPLIT.read_text("utf-8"))
    rows = {row["key"]: row for row in objective_rows()}
    for split in ("dev", "heldout"):
        part = [rows[key] for key in halves[split]]
        labels = ["engaged" if r["achieved"] else "not engaged" for r in part]
        verdicts = [
            "engaged"
            if outcome("harmful", r["objective"], r["response"]) == "engaged"
            else "not engaged"
            for r in part
        ]
        result[f"pyrit:{split}"] = scores(labels, verdicts)
    return result


def errors(outcome: Outcome) -> None:
    """Print the dev half's disagreements (never the held-out half's)."""
    for item in study_items():
        if item["split"] != "dev":
            continue
        verdict = outcome(item["kind"], item["request"], item["response"])
        if verdict != item["label"]:
            print(f"{item['id']} {item['set']}: label {item['label']}, judge {verdict}")
            print(f"   {item['request'][:90]!r}\n   {item['response'][:140]!r}")
    halves = json.loads(OBJECTIVE_SPLIT.read_text("utf-8"))
    rows = {row["key"]: row for row in objective_rows()}
    for key in halves["dev"]:
        row = rows[key]
        engaged = outcome("harmful", row["objective"], row["response"]) == "engaged"
        if engaged != row["achieved"]:
            print(f"pyrit {key}: achieved {row['achieved']}, judge engaged {engaged}")
            print(f"   {row['objective'][:90]!r}\n   {row['response'][:200]!r}")


def _cell(rate: dict[str, Any]) -> str:
    if rate["value"] is None:
        return "–"
    return f"{rate['value']:.2f} [{rate['ci'][0]:.2f}, {rate['ci'][1]:.2f}]"


def table(found: dict[str, Any]) -> str:
    """The Markdown table docs/judge.md shows, from the committed JSON: per label set and half,
    before and after, agreement and engaged's precision and recall (broken's for look-alikes)."""
    lines = [
        "| labels | half | n | judge | agreement | engaged: precision | engaged: recall "
        "| broken: precision | broken: recall |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    parts = [
        ("study, harmful (plain and jailbroken)", "study", "harmful"),
        ("study, look-alikes", "study", "benign"),
        ("pyrit objective", "pyrit", None),
    ]
    for label, source, kind in parts:
        for half in ("dev", "heldout"):
            for judge in ("before", "after"):
                found_half = found[judge][f"{source}:{half}"]
                part = found_half[kind] if kind else found_half
                cells = [_cell(part["agreement"])]
                for outcome in ("engaged", "broken"):
                    scores = part.get(outcome)
                    cells += ([_cell(scores["precision"]), _cell(scores["recall"])] if scores
                              else ["–", "–"])  # fmt: skip
                lines.append(f"| {label} | {half} | {part['n']} | {judge} | {' | '.join(cells)} |")
    lines += ["", "Held-out confusion, after (label → judge: count):", ""]
    for label, source, kind in parts:
        half = found["after"][f"{source}:heldout"]
        confusion = (half[kind] if kind else half)["confusion"]
        cells = "; ".join(
            f"{truth} → " + ", ".join(f"{k} {v}" for k, v in sorted(said.items()))
            for truth, said in confusion.items()
        )
        lines.append(f"- {label}: {cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["measure", "errors", "table"])
    parser.add_argument("--label", default="after")
    parser.add_argument(
        "--show-heldout",
        action="store_true",
        help="Print the held-out half's numbers too (once, at the end).",
    )
    args = parser.parse_args()
    if args.command == "errors":
        errors(current_outcome)
        return
    if args.command == "table":
        print(table(json.loads(OUT.read_text("utf-8"))))
        return
    found = json.loads(OUT.read_text("utf-8")) if OUT.is_file() else {}
    found[args.label] = measure(current_outcome)
    OUT.write_text(json.dumps(found, indent=1) + "\n", "utf-8")
    for name, part in found[args.label].items():
        if name.endswith("heldout") and not args.show_heldout:
            continue
        parts = part.values() if name.startswith("study") else [part]
        agree = ", ".join(f"{p['agreement']['value']:.3f} (n {p['n']})" for p in parts)
        print(f"{args.label} {name}: agreement {agree}")


if __name__ == "__main__":
    main()
