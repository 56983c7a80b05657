"""The README's two paragraphs of numbers, written from the committed JSON they summarise.

    python -m benchmarks.readme_paragraphs          # rewrite them in README.md
    python -m benchmarks.readme_paragraphs --check  # exit 1 if README.md differs

- **judge**: the keyword judge's agreement with labels on the held-out halves
  (``benchmarks/results/judge_outcomes.json``, entry ``after``; ``docs/judge.md`` has the table);
- **results**: the study's Farn setup (``benchmarks/efficacy/results/smollm2-farn/tables.json``):
  each method's chosen point over the benign seeds on AdvBench's test split, HarmBench and the
  few-shot jailbreak. "Back" and "kept" are the study's: the share of the lost refusal regained
  and the share of the task gain over A kept, per seed, then the mean over seeds.

Each paragraph sits in README.md between ``<!-- NAME paragraph ... -->`` and
``<!-- end NAME paragraph -->``; ``tests/test_docs_tables.py`` checks that it equals what the JSON
gives.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
JUDGE = ROOT / "benchmarks" / "results" / "judge_outcomes.json"
STUDY = ROOT / "benchmarks" / "efficacy" / "results" / "smollm2-farn" / "tables.json"
PROJECTION = ("safe_linear", "safe_linear_gated", "safe_lora")
"""The interpolation and projection methods, reported as one range."""
CHOSEN = (*PROJECTION, "lssf_activations", "safe_delta")
WIDTH = 100


def _range(values: list[float], digits: int = 2) -> str:
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return low if low == high else f"{low}–{high}"


def _ci(rate: dict[str, Any]) -> str:
    return f"{rate['value']:.2f} [{rate['ci'][0]:.2f}, {rate['ci'][1]:.2f}]"


def judge_paragraph(outcomes: dict[str, Any]) -> str:
    """Three outcomes, and the keyword judge's held-out agreement (after the fixes)."""
    after = outcomes["after"]
    harmful = after["study:heldout"]["harmful"]
    benign = after["study:heldout"]["benign"]
    pyrit = after["pyrit:heldout"]
    return (
        "**The judge.** Each reply gets one of three outcomes. On harmful prompts (plain, or "
        "wrapped in a jailbreak) it is **refused**, **engaged** (the attack succeeded) or "
        "**broken** (empty, digits, a link, one word over and over: a broken merge never "
        "scores as safe); on benign look-alikes it is **helpful**, **refused** (over-refusal) or "
        "**broken**. The default keyword judge runs offline and reads words, not meaning; "
        "`--judge wildguard`, Llama Guard 3 and HarmBench's classifier are wired in (tested "
        "offline only, on tiny stand-ins). On labels it was not tuned on (the held-out halves), "
        f"it agrees on {_ci(harmful['agreement'])} of {harmful['n']} replies of the study's "
        f"models to harmful prompts, {_ci(benign['agreement'])} of {benign['n']} replies to "
        f"look-alikes, and {_ci(pyrit['agreement'])} of {pyrit['n']} large-model replies "
        "labelled by pyrit as attack achieved or not (95 % Wilson intervals). How it decides, "
        "and every number: [docs/judge.md](docs/judge.md)."
    )


def _back_kept(row: dict, aligned: dict, finetuned: dict) -> tuple[float, float]:
    back = (row["refusal_rate"] - finetuned["refusal_rate"]) / (
        aligned["refusal_rate"] - finetuned["refusal_rate"]
    )
    kept = (row["task_accuracy"] - aligned["task_accuracy"]) / (
        finetuned["task_accuracy"] - aligned["task_accuracy"]
    )
    return back, kept


def results_paragraph(tables: dict[str, Any]) -> str:
    """The Farn setup's benign seeds: AdvBench test, HarmBench and few-shot, chosen points."""
    aligned = tables["models"]["A"]
    seeds = {name: ft for name, ft in tables["finetunes"].items() if ft["kind"] == "benign"}
    test: dict[str, list[tuple[float, float]]] = {m: [] for m in CHOSEN}
    for ft in seeds.values():
        for method in CHOSEN:
            test[method].append(
                _back_kept(ft["points"][f"{method}-chosen"]["summary"], aligned, ft["finetuned"])
            )
    back = {m: statistics.mean(b for b, _ in rows) for m, rows in test.items()}
    kept = {m: statistics.mean(k for _, k in rows) for m, rows in test.items()}

    third = {row["name"]: row["extra"] for row in tables["thirdparty"]}
    a_third = third["A"]
    harmbench: dict[str, list[float]] = {m: [] for m in CHOSEN}
    few_shot: dict[str, list[float]] = {m: [] for m in CHOSEN}
    for seed in seeds:
        ft = third[seed]
        for method in CHOSEN:
            row = third[f"{seed}/{method}-chosen"]
            harmbench[method].append(
                (row["refusal_rate"] - ft["refusal_rate"])
                / (a_third["refusal_rate"] - ft["refusal_rate"])
            )
            few_shot[method].append(row["attacks"]["few_shot"]["refusal_rate"])
    hb = {m: statistics.mean(v) for m, v in harmbench.items()}
    fs = [statistics.mean(v) for v in few_shot.values()]

    ft_refusal = statistics.mean(ft["finetuned"]["refusal_rate"] for ft in seeds.values())
    ft_task = statistics.mean(ft["finetuned"]["task_accuracy"] for ft in seeds.values())
    projection_back = _range([back[m] for m in PROJECTION])
    projection_kept = _range([kept[m] for m in PROJECTION])
    return (
        "**Results on a real chat model.** The study repairs SmolLM2-135M-Instruct after our "
        f"own alignment (refusal {aligned['refusal_rate']:.2f} on AdvBench's held-out test "
        "prompts) and a task LoRA that lowers refusal to "
        f"{ft_refusal:.2f} and raises task accuracy from {aligned['task_accuracy']:.3f} to "
        f"{ft_task:.3f} (mean of {len(seeds)} seeds). At the point each method chose under the "
        "gate on a validation split, `safe_linear`, its gated form and `safe_lora` give back "
        f"{projection_back} of the lost refusal but keep only {projection_kept} of the task "
        f"gain; `safe_delta` gives back {back['safe_delta']:.2f} and keeps "
        f"{kept['safe_delta']:.2f}; `lssf` with the paper's activation subspace gives back "
        f"{back['lssf_activations']:.2f} and keeps {kept['lssf_activations']:.2f}, but on "
        f"HarmBench it gives back only {hb['lssf_activations']:.2f}, against "
        f"{_range([hb[m] for m in PROJECTION])} for the other three and {hb['safe_delta']:.2f} "
        "for `safe_delta`. No chosen point survives a few-shot compliance prefix "
        f"({_range(fs)} refusal; the aligned model itself "
        f"{a_third['attacks']['few_shot']['refusal_rate']:.2f}). One 135M model with our own "
        "alignment: evidence at this scale, not a verdict on 7B chat models. Protocol, every "
        "table, the defaults and the attacks: [docs/study.md](docs/study.md)."
    )


def paragraphs() -> dict[str, str]:
    """Each paragraph's name and its text, from the committed JSON."""
    texts = {
        "judge": judge_paragraph(json.loads(JUDGE.read_text("utf-8"))),
        "results": results_paragraph(json.loads(STUDY.read_text("utf-8"))),
    }
    return {name: wrap(text) for name, text in texts.items()}


def wrap(text: str) -> str:
    """One paragraph in lines of at most 100 characters, as the README is written."""
    return textwrap.fill(text, WIDTH, break_long_words=False, break_on_hyphens=False)


def _span(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- {name} paragraph[^\n]*-->\n)(.*?)(<!-- end {name} paragraph -->)", re.S
    )


def found(text: str, name: str) -> str:
    """The paragraph ``name`` as it stands in ``text``."""
    match = _span(name).search(text)
    if match is None:
        raise ValueError(f"README.md has no <!-- {name} paragraph --> markers")
    return match.group(2).removesuffix("\n")


def rewrite(text: str) -> str:
    """``text`` with every paragraph replaced by what the JSON gives."""
    for name, paragraph in paragraphs().items():
        found(text, name)  # the markers exist
        text = _span(name).sub(lambda m, p=paragraph: m.group(1) + p + "\n" + m.group(3), text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Exit 1 if README.md differs.")
    args = parser.parse_args()
    text = README.read_text("utf-8")
    new = rewrite(text)
    if args.check:
        sys.exit(0 if new == text else 1)
    README.write_text(new, "utf-8")


if __name__ == "__main__":
    main()
