"""The keyword judge against human labels it was not written from: pyrit's refusal-scorer
evaluation sets (``refusal.csv`` 105 rows, ``refusal_extra.csv`` 64 rows, MIT, read from the
installed pyrit 1.1.0: ``pip install --no-deps pyrit==1.1.0``), and this project's own 155 labels
of the efficacy study's replies (``benchmarks/efficacy/results/smollm2/judge_labels.json``).

    python -m benchmarks.judge_agreement split    # once: the committed tuning/held-out split
    python -m benchmarks.judge_agreement measure --out benchmarks/results/judge_agreement.json
    python -m benchmarks.judge_agreement errors   # the tuning half's disagreements only

The pyrit rows are split in two halves (seed 0, stratified by file and label) before any error is
looked at: judge fixes are made from the tuning half's disagreements only, and the held-out half
says whether they generalise. pyrit's labels count a reply that ignores the request (a
*non-sequitur*: pyrit reuses another row's reply) as a refusal; a keyword judge does not read the
prompt, so ``measure`` also reports the rows without such a reply (a reply labelled compliance in
one row and refusal in another: the same text cannot be both unless it ignores the request).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from mergekit_safety.evaluation.agreement import agreement
from mergekit_safety.evaluation.judge import KeywordJudge, is_non_reply
from mergekit_safety.evaluation.named_sets import installed_version, package_file

FILES = ("refusal.csv", "refusal_extra.csv")
PYRIT_DIR = "pyrit/datasets/scorer_evals/refusal_scorer/"
HERE = Path(__file__).resolve().parent
SPLIT = HERE / "results" / "judge_split.json"
OURS = HERE / "efficacy" / "results" / "smollm2" / "judge_labels.json"
SEED = 0


def scorer_rows(path: Path) -> list[dict[str, Any]]:
    """One of pyrit's scorer-evaluation CSVs: key ``file:index``, objective, response and the
    human label (``human_score`` 1 → True); its ``# dataset_version`` line skipped."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines(True)
             if not line.startswith("#")]  # fmt: skip
    return [
        {"key": f"{path.name}:{index}", "objective": row["objective"],
         "response": row["assistant_response"], "label": row["human_score"].strip() == "1"}
        for index, row in enumerate(csv.DictReader(lines))
    ]  # fmt: skip


def pyrit_rows() -> list[dict[str, Any]]:
    """Every labelled row of the two files: key ``file:index``, objective, response, refusal."""
    rows = []
    for name in FILES:
        path = package_file("pyrit", PYRIT_DIR + name, needed_for="judge agreement",
                            version="1.1.0")  # fmt: skip
        for row in scorer_rows(path):
            row["refusal"] = row.pop("label")
            rows.append(row)
    complied = {r["response"].strip() for r in rows if not r["refusal"]}
    for row in rows:  # a reply labelled compliance for one objective, refusal for another
        row["reused"] = row["refusal"] and row["response"].strip() in complied
    return rows


def make_split(rows: list[dict[str, Any]], seed: int = SEED) -> dict[str, Any]:
    """Half of each (file, label) stratum to tuning, the rest held out; seeded."""
    strata = defaultdict(list)
    for row in rows:
        strata[(row["key"].split(":")[0], row["refusal"])].append(row["key"])
    rng = random.Random(seed)
    tuning, held = [], []
    for key in sorted(strata):
        keys = sorted(strata[key])
        rng.shuffle(keys)
        half = len(keys) // 2
        tuning += keys[:half]
        held += keys[half:]
    digest = hashlib.sha256(
        "".join(r["key"] + r["response"] for r in rows).encode("utf-8")
    ).hexdigest()
    return {"seed": seed, "rows_sha256": digest, "tuning": sorted(tuning),
            "held_out": sorted(held)}  # fmt: skip


def verdict(judge: KeywordJudge, response: str) -> bool:
    """The evaluator's reading: a non-reply is never a refusal."""
    return judge.is_refusal(response) and not is_non_reply(response)


def _score(rows: list[dict[str, Any]], judge: KeywordJudge) -> dict[str, Any]:
    return agreement([r["refusal"] for r in rows], [verdict(judge, r["response"]) for r in rows])


def ours() -> list[dict[str, Any]]:
    """This project's labels: refusal vs not (compliance or degenerate)."""
    labelled = json.loads(OURS.read_text(encoding="utf-8"))
    kept = [r for r in labelled if r.get("label") in ("refusal", "compliance", "degenerate")]
    return [{"response": r["response"], "refusal": r["label"] == "refusal"} for r in kept]


def measure() -> dict[str, Any]:
    rows = pyrit_rows()
    split = json.loads(SPLIT.read_text(encoding="utf-8"))
    by_key = {r["key"]: r for r in rows}
    judge = KeywordJudge()
    out: dict[str, Any] = {"pyrit_version": installed_version("pyrit"), "split": str(SPLIT.name)}
    for half in ("tuning", "held_out"):
        chosen = [by_key[k] for k in split[half]]
        out[half] = _score(chosen, judge)
        out[f"{half}_not_reused"] = _score([r for r in chosen if not r["reused"]], judge)
    out["pyrit_all"] = _score(rows, judge)
    out["ours"] = _score(ours(), judge)
    out["rows_reused"] = sum(r["reused"] for r in rows)
    return out


def errors() -> list[dict[str, Any]]:
    rows = {r["key"]: r for r in pyrit_rows()}
    split = json.loads(SPLIT.read_text(encoding="utf-8"))
    judge = KeywordJudge()
    return [
        {"key": k, "human": rows[k]["refusal"], "reused": rows[k]["reused"],
         "objective": rows[k]["objective"][:80], "response": rows[k]["response"][:300]}
        for k in split["tuning"]
        if verdict(judge, rows[k]["response"]) != rows[k]["refusal"]
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("split", "measure", "errors"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.action == "split":
        if SPLIT.exists():
            raise SystemExit(f"{SPLIT} exists: the split is made once, before any tuning")
        SPLIT.write_text(json.dumps(make_split(pyrit_rows()), indent=1) + "\n", encoding="utf-8")
        return
    result = measure() if args.action == "measure" else errors()
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
