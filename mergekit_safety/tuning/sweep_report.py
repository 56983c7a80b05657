"""What ``sweep --out`` writes: ``sweep.json``, ``.csv``, ``.md`` and the plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergekit_safety.core.acceptance import (
    METRICS,
    TITLES,
    interval,
    metric,
    objective_label,
    per_set_note,
)
from mergekit_safety.publish.plot import plot_grid, plot_sweep
from mergekit_safety.tuning.choice import close_to_chosen
from mergekit_safety.tuning.grid import TIE_BREAK
from mergekit_safety.tuning.grid_sampler import SweepResult

COLUMNS = (
    "kind",
    "value",
    "model",
    *METRICS,
    "n_harmful",
    "n_benign",
    "n_task",
    "passes",
    "chosen",
)


def sweep_record(result: SweepResult, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything about a sweep as JSON: every point, the choice, the gate and ``context``."""
    plan = result.plan
    chosen = result.chosen
    rows = result.rows()
    return {
        "recipe": str(plan.recipe_path),
        "method": plan.method,
        "parameter": plan.parameter,
        "parameters": list(plan.parameters),
        "axes": {
            name: list(values) for name, values in zip(plan.parameters, plan.axes, strict=True)
        },
        "values": [list(v) if isinstance(v, tuple) else v for v in plan.values],
        "gate": result.gate.record(),
        "objective": result.gate.objective,
        "selection": f"best {objective_label(result.gate.objective)} among the points that pass "
        "the gate; " + TIE_BREAK,
        **dict(context or {}),
        "references": {
            "aligned": with_intervals(result.aligned),
            "finetuned": [with_intervals(summary) for summary in result.finetuned],
        },
        "points": [with_intervals(row) for row in rows if row["kind"] == "merged"],
        "failed": [row for row in rows if row["kind"] == "failed"],
        "chosen": None
        if chosen is None
        else {
            "value": list(chosen.value) if isinstance(chosen.value, tuple) else chosen.value,
            **plan.as_dict(chosen.value),
            **with_intervals(chosen.metrics),
        },
        "within_noise": [
            plan.as_dict(point.value)
            for point in close_to_chosen(result.points, chosen, result.gate)
        ],
        "out": None if result.out is None else str(result.out),
    }


def with_intervals(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` with each rate's 95 % Wilson interval as ``<rate>_ci: [low, high]``."""
    out = dict(metrics)
    for key in METRICS:
        found = interval(metrics, key)
        if found is not None:
            out[f"{key}_ci"] = [round(found[0], 4), round(found[1], 4)]
    return out


def noise_note(result: SweepResult) -> str:
    """One sentence on whether the choice stands out from the other passing points."""
    if result.chosen is None:
        return "no point passes the gate"
    close = close_to_chosen(result.points, result.chosen, result.gate)
    name = objective_label(result.gate.objective)
    if not close:
        return f"no other passing point is within noise of the choice in {name}"
    labels = ", ".join(result.plan.label(point.value) for point in close)
    return (
        f"within noise of the choice ({name} 95 % intervals overlap): "
        f"{len(close)} other "
        f"passing point{'s' if len(close) > 1 else ''} ({labels}); the data cannot rank them"
    )


def markdown_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :meth:`SweepResult.rows`; the chosen value's row in bold."""
    header = ["model", "kind", *(f"{TITLES[key]} [95 % CI]" for key in METRICS), "gate"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * len(METRICS) + "---|"]
    for row in rows:
        cells = [
            str(row.get("model", "")).replace("|", "\\|"),
            row["kind"],
            *(
                _cell(metric(row, key), interval(row, key)) + per_set_note(row, key)
                for key in METRICS
            ),
            {True: "pass", False: "fail"}.get(row.get("passes"), ""),
        ]
        if row["kind"] == "failed":
            cells[-1] = f"not evaluated: {row['error']}".replace("|", "\\|")
        if row.get("chosen"):
            cells = [f"**{cell}**" if cell else cell for cell in cells]
            cells[-1] += " (chosen)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_reports(
    result: SweepResult, directory: Path, context: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """``sweep.json``, ``sweep.csv``, ``sweep.md`` and ``sweep.png`` in ``directory``.

    A grid also gets ``sweep-heatmap.png``: each metric over the two parameters, gate marked.
    """
    import csv
    import json

    directory.mkdir(parents=True, exist_ok=True)
    paths = {kind: directory / f"sweep.{kind}" for kind in ("json", "csv", "md", "png")}
    if result.plan.grid:
        paths["heatmap"] = directory / "sweep-heatmap.png"
    record = sweep_record(result, context)
    paths["json"].write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    rows = result.rows()
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        columns = (*COLUMNS[:2], *result.plan.parameters, *COLUMNS[2:])
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    gate = result.gate.describe()
    chosen = (
        "none passes the gate" if result.chosen is None else result.plan.label(result.chosen.value)
    )
    from mergekit_safety.evaluation.eval_report import attack_table

    attacks = attack_table(rows)
    paths["md"].write_text(
        f"# Sweep of {result.plan.parameter} ({result.plan.method}, {result.plan.recipe_path})\n\n"
        f"{markdown_rows(rows)}\n\n- Gate: {gate}\n- Chosen: {chosen}\n"
        f"- Noise: {noise_note(result)}\n- Selection: {record['selection']}\n"
        + (f"\n## Jailbreak attacks (not gated)\n\n{attacks}\n" if attacks else ""),
        encoding="utf-8",
    )
    title = f"{result.plan.method}: sweep of {result.plan.parameter} (gate: {gate})"
    if result.plan.grid:
        plot_grid(
            rows,
            paths["png"],
            paths["heatmap"],
            parameters=result.plan.parameters,
            axes=result.plan.axes,
            gate=result.gate,
            title=title,
        )
        return paths
    plot_sweep(
        rows,
        paths["png"],
        gate=result.gate,
        title=title,
        parameter=result.plan.parameter,
    )
    return paths


def _cell(value: float | None, bounds: tuple[float, float] | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if bounds is None else f"{value:.3f} [{bounds[0]:.2f}, {bounds[1]:.2f}]"
