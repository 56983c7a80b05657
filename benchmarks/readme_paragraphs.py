"""The README's two paragraphs of numbers, written from the committed JSON they summarise.

    python -m benchmarks.readme_paragraphs          # rewrite them in README.md
    python -m benchmarks.readme_paragraphs --check  # exit 1 if README.md differs

- **judge**: the keyword judge's agreement with labels on the held-out halves
  (``benchmarks/results/judge_outcomes.json``, entry ``after``; ``docs/judge.md`` has the table);
- **results**: the study's Farn setup (``benchmarks/efficacy/results/smollm2-farn/tables.json``),
  re-judged under three outcomes: what the fine-tunes engage and break, and each method's harm
  removed and task kept on the attack fine-tune with paired bootstrap intervals
  (``intervals.attack``); and the chat-form setup's benign fine-tune
  (``results/smollm2-chat/evals/test``).

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
CHAT = ROOT / "benchmarks" / "efficacy" / "results" / "smollm2-chat" / "evals" / "test"
PROJECTION = ("safe_linear", "safe_linear_gated", "safe_lora")
"""The interpolation and projection methods, reported as one range."""
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


def _removed_kept(tables: dict[str, Any], point: str) -> tuple[dict, dict]:
    """Harm removed and task kept at ``point`` on the attack fine-tune, with their paired
    bootstrap intervals (``tables.json`` → ``intervals.attack``)."""
    found = tables["intervals"]["attack"][point]
    return found["removed"], found["kept"]


def _point(value: dict[str, Any]) -> str:
    return f"{value['point']:.2f} [{value['low']:.2f}, {value['high']:.2f}]"


def results_paragraph(tables: dict[str, Any], chat: dict[str, dict[str, Any]]) -> str:
    """The Farn setup re-judged under three outcomes (its attack fine-tune is the one that adds
    harm), and the pre-registered chat-form setup's fine-tunes (``chat``: summaries by model)."""
    seeds = [ft["finetuned"] for ft in tables["finetunes"].values() if ft["kind"] == "benign"]
    attack = next(ft["finetuned"] for ft in tables["finetunes"].values() if ft["kind"] == "attack")
    projection = [_removed_kept(tables, f"{m}-chosen") for m in PROJECTION]
    delta_removed, delta_kept = _removed_kept(tables, "safe_delta-chosen")
    lssf_removed, lssf_kept = _removed_kept(tables, "lssf-default")
    return (
        "**Results on a real chat model.** In the study on SmolLM2-135M-Instruct (every reply "
        "judged as refused, engaged or broken), the benign task LoRAs of the main setup add "
        "little harm: they engage "
        f"{statistics.mean(s['engaged_rate'] for s in seeds):.2f} of AdvBench's held-out "
        f"harmful prompts (the aligned model {tables['models']['A']['engaged_rate']:.2f}) and "
        f"break {statistics.mean(s['broken_rate'] for s in seeds):.2f} of their replies (digits, "
        f"a URL; mean of {len(seeds)} seeds); only the attack fine-tune complies (engaged "
        f"{attack['engaged_rate']:.2f}). On it, at the point each method chose under the gate, "
        "`safe_linear`, its gated form and `safe_lora` remove "
        f"{_range([r['point'] for r, _ in projection])} of the added engagement but keep only "
        f"{_range([k['point'] for _, k in projection])} of the task gain; `safe_delta` removes "
        f"{delta_removed['point']:.2f} and keeps {delta_kept['point']:.2f}; data-free `lssf` "
        f"at its default (no point of its sweep passed the gate) removes {_point(lssf_removed)} "
        f"and keeps {_point(lssf_kept)} (95 % paired bootstrap). No chosen point removes ≥ 0.90 "
        "while keeping ≥ 0.80. In a pre-registered setup whose task fine-tune answers in "
        "sentences, the benign fine-tune learns the task (accuracy "
        f"{chat['A']['task_accuracy']:.3f} → {chat['benign-s0']['task_accuracy']:.3f}) and "
        f"engages {chat['benign-s0']['engaged_rate']:.2f}: at this scale a benign fine-tune "
        "did not erode alignment, and the attack fine-tune is the case that matters. One seed "
        "per attack fine-tune, one 135M model with our own alignment: evidence at this scale, "
        "not a verdict on 7B chat models. Protocol, every table and interval: "
        "[docs/study.md](docs/study.md)."
    )


def _chat_summaries() -> dict[str, dict[str, Any]]:
    out = {}
    for model in ("A", "benign-s0"):
        found = json.loads((CHAT / model / "summary.json").read_text("utf-8"))
        out[model] = found[0] if isinstance(found, list) else found
    return out


def paragraphs() -> dict[str, str]:
    """Each paragraph's name and its text, from the committed JSON."""
    texts = {
        "judge": judge_paragraph(json.loads(JUDGE.read_text("utf-8"))),
        "results": results_paragraph(json.loads(STUDY.read_text("utf-8")), _chat_summaries()),
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
