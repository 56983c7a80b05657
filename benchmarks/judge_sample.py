"""The replies the three-outcome judge is checked on: a stratified sample of the efficacy study's
own records, and a fixed split of pyrit's human-labelled objective rows. Both are drawn and
committed before any judge error is read.

    python -m benchmarks.judge_sample draw     # once: benchmarks/results/judge_sample.jsonl
                                               #       benchmarks/results/judge_objective_split.json

The study's sample is stratified by prompt set (harmful, benign look-alikes, harmful prompts under
a jailbreak), the kind of model (the references U/A/S/H, the benign fine-tunes, the attack
fine-tune, the merges) and the keyword judge's old verdict (refusal, compliance, empty), so every
kind of model and outcome is present; up to ``PER_STRATUM`` replies each, distinct (prompt, reply)
pairs only. The file holds no verdict: labels are written from the prompt and reply alone
(``judge_labels_study.jsonl``, by the rules in ``docs/judge.md``). Each item and each pyrit row is
put in the ``dev`` or ``heldout`` half by a hash of its text: judge fixes are made from the dev
half's disagreements only; the held-out half says whether they generalise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "efficacy" / "results"
SAMPLE = HERE / "results" / "judge_sample.jsonl"
OBJECTIVE_SPLIT = HERE / "results" / "judge_objective_split.json"
OBJECTIVE_DIR = "pyrit/datasets/scorer_evals/objective/"
SETS = ("harmful", "benign", "attack")
PER_STRATUM = 12
SEED = 0


def split_of(text: str) -> str:
    """``dev`` or ``heldout``, by the first byte of the text's SHA-256 (fixed, order-free)."""
    return "dev" if hashlib.sha256(text.encode()).digest()[0] % 2 == 0 else "heldout"


def model_kind(path: Path) -> str:
    """references (U, A, S, H, A-lox), benign-ft, attack-ft, or merge, from a records path."""
    parts = path.relative_to(RESULTS).parts  # setup/evals/split/model[/merge]/records.jsonl
    if len(parts) > 5:
        return "merge"
    model = parts[3]
    if model.startswith("benign"):
        return "benign-ft"
    if model.startswith("attack"):
        return "attack-ft"
    return "reference"


def old_verdict(response: str) -> str:
    """The keyword judge's verdict as the study recorded it (empty = no reply)."""
    from mergekit_safety.evaluation.judge import KeywordJudge, is_non_reply

    if is_non_reply(response):
        return "empty"
    return "refusal" if KeywordJudge().is_refusal(response) else "compliance"


def study_pool() -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Every distinct (prompt, reply) of the harmful, benign and attack sets, by stratum."""
    pool: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for path in sorted(RESULTS.rglob("records.jsonl")):
        if "validation" in path.parts:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["set"] not in SETS:
                continue
            request = row.get("request", row["prompt"])
            key = (row.get("prompt", ""), row["response"])
            if key in seen:
                continue
            seen.add(key)
            kind = model_kind(path)
            item = {
                "set": row["set"],
                "request": request,
                "response": row["response"],
                "source": str(path.parent.relative_to(RESULTS)),
                **({"attack": row["attack"]} if row["set"] == "attack" else {}),
            }
            pool[(row["set"], kind, old_verdict(row["response"]))].append(item)
    return pool


def draw_study(per_stratum: int = PER_STRATUM, seed: int = SEED) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    items = []
    for stratum in sorted(study_pool().items()):
        (_set, _kind, _verdict), rows = stratum
        items += rng.sample(rows, min(per_stratum, len(rows)))
    rng.shuffle(items)  # the labeller reads them in no stratum order
    for index, item in enumerate(items):
        item["id"] = f"s{index:03d}"
        item["split"] = split_of(item["request"] + "\x00" + item["response"])
    return [{"id": i.pop("id"), **i} for i in items]


def objective_rows() -> list[dict[str, Any]]:
    """pyrit 1.1.0's human-labelled objective rows: key ``file:index``, objective, response,
    achieved (the reply achieves the harmful objective: our *engaged*)."""
    from benchmarks.judge_agreement import scorer_rows
    from mergekit_safety.evaluation.named_sets import package_file

    base = package_file("pyrit", OBJECTIVE_DIR + "bias.csv", needed_for="judge agreement",
                        version="1.1.0").parent  # fmt: skip
    rows = []
    for path in sorted(base.glob("*.csv")):
        for row in scorer_rows(path):
            row["achieved"] = row.pop("label")
            rows.append(row)
    return rows


def draw_objective_split() -> dict[str, Any]:
    rows = objective_rows()
    split: dict[str, list[str]] = {"dev": [], "heldout": []}
    for row in rows:
        split[split_of(row["objective"] + "\x00" + row["response"])].append(row["key"])
    return {"source": "pyrit 1.1.0 " + OBJECTIVE_DIR + "*.csv", "rule": "sha256(objective + "
            "NUL + response)[0] even: dev, odd: heldout", **split}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["draw"])
    parser.parse_args()
    items = draw_study()
    SAMPLE.parent.mkdir(parents=True, exist_ok=True)
    SAMPLE.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), "utf-8")
    OBJECTIVE_SPLIT.write_text(json.dumps(draw_objective_split(), indent=1) + "\n", "utf-8")
    print(f"{len(items)} study replies -> {SAMPLE}; pyrit split -> {OBJECTIVE_SPLIT}")


if __name__ == "__main__":
    main()
