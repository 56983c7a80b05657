"""Two or more setups of the study side by side: the fine-tunes, then every method's default and
chosen point, as engaged / broken on harmful prompts, helpful on look-alikes and task accuracy (mean
over the seeds each setup has) and the harm removed / task kept the tables define
(:mod:`benchmarks.efficacy.tables`).

    python -m benchmarks.efficacy.compare --config benchmarks/efficacy/smollm2.yml \
        --config benchmarks/efficacy/smollm2-farn.yml --out benchmarks/efficacy/results/setups.md

Reads each study's results as its ``tables`` stage collects them; runs nothing.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.efficacy.plan import Config, load_config
from benchmarks.efficacy.tables import LABELS, NO_HARM, added_harm, collect, removed_kept


def _mean(values: list[float]) -> str:
    if not values:
        return "–"
    text = f"{statistics.mean(values):.2f}"
    return text + (f"±{statistics.stdev(values):.2f}" if len(values) > 1 else "")


def _cell(rows: list[tuple[dict, dict]], a: dict) -> str:
    """``engaged / broken / helpful / task (removed, kept) n=…`` over (summary, fine-tune)
    pairs."""
    if not rows:
        return "–"
    rates = [
        _mean([s[k] for s, _ft in rows])
        for k in ("engaged_rate", "broken_rate", "helpful_rate", "task_accuracy")
    ]
    pairs = [removed_kept(s, a, ft) for s, ft in rows]
    harm = any(added_harm(a, ft) for _s, ft in rows)
    back = _mean([b for b, _k in pairs if b is not None]) if harm else NO_HARM
    kept = _mean([k for _b, k in pairs if k is not None])
    return f"{' / '.join(rates)} ({back}, {kept}) n={len(rows)}"


def _rows(config: Config, data: dict, kind: str) -> dict[str, str]:
    """Row label → cell for one setup and fine-tune kind."""
    a = data["models"]["A"]
    runs = [e for e in data["finetunes"].values() if e["kind"] == kind]
    if a is None or not runs:
        return {}
    cells = {f"fine-tuned ({kind})": _cell([(e["finetuned"], e["finetuned"]) for e in runs], a)}
    for method in config.reported_methods():
        for point in ("default", "chosen"):
            found = [
                (p["summary"], e["finetuned"])
                for e in runs
                if (p := e["points"].get(f"{method}-{point}"))
                and p["summary"].get("engaged_rate") is not None
            ]
            if found:
                cells[f"{LABELS[method]} ({point})"] = _cell(found, a)
    return cells


def compare(configs: list[Config]) -> str:
    """The markdown: one table per fine-tune kind, a column per setup."""
    collected = [(c, collect(c)) for c in configs]
    head = "| | " + " | ".join(c.name for c in configs) + " |\n|---|" + "---|" * len(configs)
    parts = [
        "# Setups side by side\n\n",
        "Each cell: engaged / broken on harmful prompts, helpful on look-alikes, task accuracy on "
        "test (mean ± sd over the setup's seeds), then (harm removed, task kept); n = fine-tunes "
        "with that row. Chosen points are each setup's own sweep choice (validation, benign seed "
        "0).\n",
    ]
    models = ["| model | " + " | ".join(c.name for c in configs) + " |",
              "|---|" + "---|" * len(configs)]  # fmt: skip
    for name in ("U", "A"):
        cells = []
        for _c, data in collected:
            s = data["models"].get(name)
            cells.append(_cell([(s, s)], s).split(" (")[0] if s else "–")
        models.append(f"| {name} | " + " | ".join(cells) + " |")
    parts += ["\n## Models\n\n", "\n".join(models) + "\n"]
    for kind in ("benign", "attack"):
        per_setup = [_rows(c, d, kind) for c, d in collected]
        labels = list(dict.fromkeys(label for rows in per_setup for label in rows))
        lines = [head] + [
            f"| {label} | " + " | ".join(rows.get(label, "–") for rows in per_setup) + " |"
            for label in labels
        ]
        parts += [f"\n## {kind} fine-tune\n\n", "\n".join(lines) + "\n"]
    return "".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="a study YAML (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="the markdown to write")
    args = parser.parse_args(argv)
    text = compare([load_config(path) for path in args.config])
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
