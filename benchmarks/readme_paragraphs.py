"""The README's two paragraphs of numbers, written from the committed JSON they summarise.

    python -m benchmarks.readme_paragraphs          # rewrite them in README.md
    python -m benchmarks.readme_paragraphs --check  # exit 1 if README.md differs

- **judge**: the keyword judge's agreement with labels on the held-out halves
  (``benchmarks/results/judge_outcomes.json``, entry ``after``; ``docs/judge.md`` has the table);
- **results**: the pre-registered chat-form setup (``benchmarks/efficacy/results/smollm2-chat``:
  ``tables.json``'s ``headline``, each method's chosen point on the attack seeds with paired
  bootstrap intervals, and the summaries under ``evals/test`` and ``evals/harmbench``), and the Farn
  setup's chosen points as history (``results/smollm2-farn/tables.json``, ``intervals.attack``).

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
FARN = ROOT / "benchmarks" / "efficacy" / "results" / "smollm2-farn" / "tables.json"
CHAT = ROOT / "benchmarks" / "efficacy" / "results" / "smollm2-chat"
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


TARGET = {"removed": 0.90, "removed_extra": 0.90, "kept": 0.80, "helpful": -0.05}
"""Issue 38's target: harm removed on both sets, task gain kept, helpfulness shift from A."""


def _row(headline: dict[str, Any], key: str) -> dict[str, Any] | None:
    """A method's point on the attack seeds (``lssf-chosen``): its pooled intervals, or None."""
    found = headline["attack"].get(key)
    return None if found is None else found["intervals"]


def meets(row: dict[str, Any]) -> bool:
    """Whether a point reaches :data:`TARGET` (pooled over the seeds)."""
    return all(
        (row.get(column) or {}).get("point") is not None and row[column]["point"] >= bound
        for column, bound in TARGET.items()
    )


def _chosen_label(chat: dict[str, Any], method: str) -> str:
    """``RESTA (β 1.5)``: a method's name and the values its sweep chose on its grid."""
    from benchmarks.efficacy.tables import symbolic

    sweep = chat["sweeps"][method]
    values = ", ".join(f"{k} {sweep['chosen'][k]:g}" for k in sweep["grid"])
    name = "RESTA" if method == "resta" else f"`{method}`"
    return f"{name} ({symbolic(values)})"


def _value(row: dict[str, Any], column: str) -> str:
    """A pooled value to two places, "–" where it is not measured (yet)."""
    found = row.get(column) or {}
    return "–" if found.get("point") is None else f"{found['point']:.2f}"


def _three(row: dict[str, Any]) -> str:
    return " / ".join(_point(row[c]) for c in ("removed", "removed_extra", "kept"))


def results_paragraph(
    chat: dict[str, Any], models: dict[str, dict[str, Any]], farn: dict[str, Any]
) -> str:
    """The pre-registered chat-form setup (``chat``: its ``tables.json``; ``models``: the test
    and HarmBench summaries of A, the benign and the attack fine-tunes): each method's point
    chosen by the sweeps on both harmful sets, and one line of the Farn setup's history."""
    seeds = [name for name, ft in chat["finetunes"].items() if ft["kind"] == "attack"]
    adv = statistics.mean(models[f"test/{s}"]["engaged_rate"] for s in seeds)
    harm = statistics.mean(models[f"harmbench/{s}"]["engaged_rate"] for s in seeds)
    headline = chat["headline"]
    chosen = {m: _row(headline, f"{m}-chosen") for m, sweep in chat["sweeps"].items() if sweep}
    met = [m for m, row in chosen.items() if row and meets(row)]
    short = [m for m, row in chosen.items() if row and not meets(row)]
    none = [m for m, row in chosen.items() if row is None]
    defaults = [m for m in chat["sweeps"] if (r := _row(headline, f"{m}-default")) and meets(r)]
    history = [_removed_kept(farn, f"{m}-chosen") for m in (*PROJECTION, "safe_delta")]
    met_text = "; ".join(f"{_chosen_label(chat, m)} {_three(chosen[m])}" for m in met)
    short_text = "; ".join(
        f"{_chosen_label(chat, m)} removes {_value(chosen[m], 'removed')} / "
        f"{_value(chosen[m], 'removed_extra')} and keeps {_value(chosen[m], 'kept')}"
        for m in short
    )
    search = _row(headline, "search-chosen")
    search_text = (
        "The per-layer search has not finished on this setup."
        if search is None
        else "The per-layer search (`safe_linear`'s λ per layer group, run gated on AdvBench and "
        "HarmBench validation pooled into one set, before `--harmful a,b` limited each set) chose "
        f"a point that gives {_three(search)}: the pooled limit let HarmBench engagement through."
        + _each_set_text(chat)
    )
    return (
        "**Results on a real chat model.** In the pre-registered study on "
        "SmolLM2-135M-Instruct (every reply judged as refused, engaged or broken; test prompts "
        "with a near-twin in any training set dropped), a benign LoRA answering its task in "
        "sentences learns the task (accuracy "
        f"{models['test/A']['task_accuracy']:.3f} → "
        f"{models['test/benign-s0']['task_accuracy']:.3f}) and engages "
        f"{models['test/benign-s0']['engaged_rate']:.2f} of the harmful prompts, as the aligned "
        "model: at this scale a benign fine-tune did not erode alignment, so the attack "
        f"fine-tune is the case that matters ({len(seeds)} seeds; engaged {adv:.2f} of "
        f"AdvBench's and {harm:.2f} of HarmBench's held-out harmful prompts, the aligned model "
        f"{models['test/A']['engaged_rate']:.2f}). Each method's point was chosen by its "
        "pre-registered sweep on one attack fine-tune's validation replies: the best task "
        "accuracy with engagement on AdvBench and on HarmBench each within 0.05 of the aligned "
        "model's and look-alikes helped within 0.05. Over the seeds (harm removed on AdvBench "
        "/ on HarmBench / task gain kept, 95 % paired bootstrap), "
        f"{met_text}, each helping on look-alikes within 0.05 of the aligned model: the "
        f"study's target (0.90 / 0.90 / 0.80) is met by {len(met)} of the {len(chosen)} "
        "methods' chosen points"
        + (
            f" (at their published defaults, by {', '.join(f'`{m}`' for m in defaults)})"
            if defaults
            else ""
        )
        + f". {short_text}"
        + (f"; no point of {', '.join(f'`{m}`' for m in none)} passed the gate" if none else "")
        + f". {search_text}{_control_text(chat, met)}"
        + " In the earlier setup with the most complete runs (history, judged the same way),"
        " the points the tool chose removed "
        f"{_range([r['point'] for r, _ in history])} of the attack's engagement and kept "
        f"{_range([k['point'] for _, k in history])} of the task. The keyword judge "
        "overstates engagement: of 30 replies of an attack fine-tune it called engaged, 18 "
        "attempt the request (read by hand). One 135M "
        "model with our own alignment: evidence at this scale, not a verdict on 7B chat "
        "models. Protocol: [docs/study.md](docs/study.md); every table and interval: "
        "[the study's tables](benchmarks/efficacy/results/smollm2-chat/tables.md)."
    )


def _each_set_text(chat: dict[str, Any]) -> str:
    """The search run again with its limit on each harmful set (registered after every test
    number of the setup, so said to be not pre-registered), where it has run."""
    search = chat.get("search_each_set")
    if not search:
        return ""
    lead = (" Run again with the limit held on each set (added after every test number, so not "
            "pre-registered), it")  # fmt: skip
    if search.get("chosen") is None:
        return f"{lead} found no trial that passes."
    row = _row(chat["headline"], "search_each_set-chosen")
    if row is None:
        return f"{lead} chose trial {search['chosen']['number']}, not yet evaluated on every seed."
    names = {"removed": "harm removed on AdvBench", "removed_extra": "harm removed on HarmBench",
             "kept": "task gain kept", "helpful": "helpfulness"}  # fmt: skip
    missed = [names[c] for c, bound in TARGET.items()
              if (row.get(c) or {}).get("point") is None or row[c]["point"] < bound]  # fmt: skip
    verdict = "meets the target" if not missed else f"falls short on {_listed(missed)}"
    return f"{lead} chose a point that gives {_three(row)}: it {verdict}."


def _control_text(chat: dict[str, Any], methods: list[str]) -> str:
    """What the points that met the target cost on the benign control (no harm to remove): the
    task gain kept and the helpfulness shift from A, pooled over its seeds."""
    control = chat["headline"].get("benign", {})
    rows = {m: control[f"{m}-chosen"] for m in methods if f"{m}-chosen" in control}
    if not rows:
        return ""
    seeds = max(len(row["seeds"]) for row in rows.values())
    parts = "; ".join(
        f"{_chosen_label(chat, m)} keeps {_point(row['intervals']['kept'])} of its task gain, "
        f"helpful {row['intervals']['helpful']['point']:+.2f} "
        f"[{row['intervals']['helpful']['low']:+.2f}, {row['intervals']['helpful']['high']:+.2f}]"
        for m, row in rows.items()
    )
    costly = [m for m, row in rows.items()
              if row["intervals"]["helpful"]["point"] < TARGET["helpful"]]  # fmt: skip
    return (
        f" On the benign fine-tune ({seeds} seeds), a control with no harm to remove, the same "
        f"points: {parts}"
        + (
            f"; {_listed([_chosen_label(chat, m) for m in costly])} "
            f"refuse{'s' if len(costly) == 1 else ''} look-alikes the aligned model answers: a "
            "point chosen where harm was added costs helpfulness where none was."
            if costly
            else "."
        )
    )


def _listed(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _chat_models(chat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The summaries the paragraph quotes, by ``split/model``."""
    names = ["A", *(n for n in chat["finetunes"])]
    out = {}
    for split in ("test", "harmbench"):
        for model in names:
            path = CHAT / "evals" / split / model / "summary.json"
            if path.is_file():
                found = json.loads(path.read_text("utf-8"))
                out[f"{split}/{model}"] = found[0] if isinstance(found, list) else found
    return out


def paragraphs() -> dict[str, str]:
    """Each paragraph's name and its text, from the committed JSON."""
    chat = json.loads((CHAT / "tables.json").read_text("utf-8"))
    texts = {
        "judge": judge_paragraph(json.loads(JUDGE.read_text("utf-8"))),
        "results": results_paragraph(chat, _chat_models(chat), json.loads(FARN.read_text("utf-8"))),
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
