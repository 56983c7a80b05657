"""A finished search: its trials as rows, the choice under the gate, and what ``--out`` gets
(``search.json``, ``search.md``, ``search.png`` and ``search-coefficients.png``)."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_safety.core.acceptance import (
    METRICS,
    TITLES,
    Gate,
    metric,
    objective_label,
    per_set_note,
)
from mergekit_safety.tuning.study import Budget, SearchPlan
from mergekit_safety.tuning.sweep_report import markdown_rows, with_intervals

CHOICE_RULE = (
    "the best {objective} among the trials that pass the gate (ties: the larger weight, the "
    "smaller threshold, top_k or fraction, key by key; then the earlier trial)"
)


@dataclass(frozen=True)
class TrialRow:
    """One trial as the reports show it."""

    number: int
    state: str
    """complete, stopped (once it could not pass the gate: ``metrics["settled"]``), failed (its
    ``error``), or interrupted (a stopped run's; asked again)."""
    params: dict[str, float]
    metrics: dict[str, Any]
    passes: bool
    seconds: float | None
    error: str | None = None
    values: tuple[float, ...] = ()
    """``params`` in the space's key order (what the choice rule ranks)."""


@dataclass
class SearchResult:
    plan: SearchPlan
    budget: Budget
    gate: Gate
    aligned: dict[str, Any]
    finetuned: list[dict[str, Any]]
    trials: list[TrialRow]
    chosen: TrialRow | None = None
    close: list[TrialRow] = field(default_factory=list)
    wall_seconds: float = 0.0
    test: dict[str, Any] | None = None
    """``{"chosen": summary, "aligned": …, "finetuned": […]}`` on the test prompts."""

    @property
    def counted(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state != "interrupted"]


def trial_row(trial: Any, gate: Gate, keys: Sequence[str], counted: Collection[int]) -> TrialRow:
    """A finished Optuna trial as a row; ``counted``: the numbers of the trials that count
    (complete, stopped once settled, or failed with an error), the others were interrupted
    (asked again)."""
    from optuna.trial import TrialState

    metrics = dict(trial.user_attrs.get("metrics", {}))
    state = "complete" if trial.state == TrialState.COMPLETE else "failed"
    if trial.state == TrialState.PRUNED:
        state = "stopped"
    if trial.number not in counted:
        state = "interrupted"
    params = dict(trial.params)
    return TrialRow(
        number=trial.number,
        state=state,
        params=params,
        metrics=metrics,
        passes=state == "complete" and gate.passes(metrics),
        seconds=trial.user_attrs.get("seconds"),
        error=trial.user_attrs.get("error"),
        values=tuple(params[key] for key in keys) if state == "complete" else (),
    )


def search_record(result: SearchResult, context: Mapping[str, Any]) -> dict[str, Any]:
    """Everything about a search as JSON."""
    plan, gate, budget = result.plan, result.gate, result.budget
    chosen = result.chosen
    seconds = [t.seconds for t in result.counted if t.seconds is not None]
    return {
        "recipe": str(plan.sweep.recipe_path),
        "method": plan.sweep.method,
        "space": [d.record() for d in plan.space.dimensions],
        "objective": gate.objective,
        "gate": gate.record(),
        "selection": CHOICE_RULE.format(objective=objective_label(gate.objective)),
        "sampler": {
            "name": "optuna TPESampler (multivariate, constraints_func = the gate)",
            "seed": budget.seed,
            "parallel": budget.parallel,
            "startup_trials": budget.startup_trials,
        },
        "study": {"name": budget.study_name, "storage": budget.storage},
        "trials_requested": budget.trials,
        "trials_finished": len(result.counted),
        "trials_stopped": sum(t.state == "stopped" for t in result.counted),
        "wall_seconds": round(result.wall_seconds, 3),
        "mean_trial_seconds": round(sum(seconds) / len(seconds), 3) if seconds else None,
        **dict(context),
        "references": {
            "aligned": with_intervals(result.aligned),
            "finetuned": [with_intervals(s) for s in result.finetuned],
        },
        "trials": [_trial_record(t) for t in result.trials],
        "chosen": None
        if chosen is None
        else {
            **_trial_record(chosen),
            "recipe_values": {d.name: d.value(chosen.params) for d in plan.space.dimensions},
        },
        "within_noise": [t.number for t in result.close],
        "test": result.test,
    }


def _trial_record(row: TrialRow) -> dict[str, Any]:
    return {
        "number": row.number,
        "state": row.state,
        "params": row.params,
        **with_intervals(row.metrics),
        "passes": row.passes,
        "seconds": row.seconds,
        **({"error": row.error} if row.error else {}),
    }


def _settled_reason(row: TrialRow) -> str:
    return str((row.metrics.get("settled") or {}).get("reason", "the gate's verdict settled"))


def rows_for_tables(result: SearchResult) -> list[dict[str, Any]]:
    """References and trials as ``sweep``'s rows (``markdown_rows``, ``plot_sweep`` read them)."""
    rows: list[dict[str, Any]] = [{**result.aligned, "kind": "aligned"}]
    rows += [{**summary, "kind": "finetuned"} for summary in result.finetuned]
    for trial in result.counted:
        name = f"trial {trial.number}"
        if trial.state in ("failed", "stopped"):
            error = trial.error or f"stopped: {_settled_reason(trial)}"
            rows.append({"kind": "failed", "model": name, "value": trial.number, "error": error})
            continue
        rows.append(
            {
                **trial.metrics,
                "kind": "merged",
                "model": name,
                "value": trial.number,
                "passes": trial.passes,
                "chosen": trial is result.chosen,
            }
        )
    return rows


def noise_note(result: SearchResult) -> str:
    """One sentence on whether the choice stands out from the other passing trials."""
    if result.chosen is None:
        return "no trial passes the gate"
    name = objective_label(result.gate.objective)
    if not result.close:
        return f"no other passing trial is within noise of the choice in {name}"
    numbers = ", ".join(str(t.number) for t in result.close)
    return (
        f"within noise of the choice ({name} 95 % intervals overlap): {len(result.close)} "
        f"other passing trial(s) ({numbers}); the validation data cannot rank them"
    )


def markdown(result: SearchResult, record: Mapping[str, Any]) -> str:
    """``search.md``: the setting, the choice, validation beside test, and every trial."""
    plan, gate = result.plan, result.gate
    counts = record.get("prompt_sets", {}).get("counts", {})
    sizes = ", ".join(f"{n} {name}" for name, n in counts.items()) or "unknown"
    lines = [
        f"# Search over {plan.sweep.method} ({plan.sweep.recipe_path})",
        "",
        *[f"- Space: {d.describe()}" for d in plan.space.dimensions],
        f"- Gate: {record['gate']['description']}; objective: {objective_label(gate.objective)}",
        f"- Trials: {record['trials_finished']} finished of {result.budget.trials} "
        f"(Optuna TPE, seed {result.budget.seed}, {result.budget.parallel} at a time); "
        f"wall time {result.wall_seconds:.1f} s, {record['mean_trial_seconds']} s a trial; "
        f"{record['trials_stopped']} stopped once they could not pass the gate",
        f"- Validation prompts: {sizes}. The choice is the best of {record['trials_finished']} "
        "tries on these prompts: it is fitted to them, so judge it on the test prompts.",
        f"- Noise: {noise_note(result)}",
        f"- Selection: {record['selection']}",
        "",
    ]
    if result.chosen is None:
        lines += ["**No trial passes the gate; no model written.**", ""]
    else:
        chosen = result.chosen
        lines += [f"## Chosen: trial {chosen.number}", ""]
        for name, value in record["chosen"]["recipe_values"].items():
            lines.append(f"- `{name}`: `{json.dumps(value)}`")
        lines += ["", _side_by_side(result), ""]
    params = [
        "| trial | state | " + " | ".join(plan.space.keys()) + " | seconds |",
        "|---:|---|" + "---:|" * len(plan.space.keys()) + "---:|",
    ]
    for trial in result.trials:
        values = [f"{trial.params[k]:.4g}" if k in trial.params else "" for k in plan.space.keys()]
        seconds = "" if trial.seconds is None else f"{trial.seconds:.1f}"
        state = trial.state + (f": {trial.error}" if trial.error else "")
        if trial.state == "stopped":
            state += f": {_settled_reason(trial)}"
        params.append(
            f"| {trial.number} | {state.replace('|', '/')} | "
            + " | ".join(values)
            + f" | {seconds} |"
        )
    lines += [
        "## Trials (validation prompts)",
        "",
        markdown_rows(rows_for_tables(result)),
        "",
        "## Trial parameters",
        "",
        *params,
        "",
    ]
    return "\n".join(lines)


def _side_by_side(result: SearchResult) -> str:
    """The chosen trial and the references on validation, and on test when given."""
    keys = [(key, TITLES[key]) for key in METRICS]
    sets = [
        (
            "validation",
            {
                "chosen": result.chosen.metrics if result.chosen else {},
                "aligned": result.aligned,
                "finetuned": result.finetuned,
            },
        )
    ]
    if result.test is not None:
        sets.append(("test", result.test))
    header = "| model | prompts | " + " | ".join(label for _k, label in keys) + " |"
    lines = [header, "|---|---|" + "---:|" * len(keys)]
    for model in ("chosen", "aligned", "finetuned"):
        for name, found in sets:
            summaries = found[model] if model == "finetuned" else [found[model]]
            for summary in summaries:
                cells = [_cell(summary, key) for key, _label in keys]
                lines.append(f"| {model} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(summary: Mapping[str, Any], key: str) -> str:
    from mergekit_safety.core.acceptance import interval

    value, bounds = metric(summary, key), interval(summary, key)
    if value is None:
        return "–"
    cell = f"{value:.3f}" + ("" if bounds is None else f" [{bounds[0]:.2f}, {bounds[1]:.2f}]")
    return cell + per_set_note(summary, key)


def write_reports(result: SearchResult, directory: Path, context: Mapping[str, Any]) -> dict:
    """``search.json``, ``search.md``, ``search.png`` (trade-off, Pareto front, gate) and
    ``search-coefficients.png`` (the chosen per-layer values over depth) in ``directory``."""
    from mergekit_safety.publish.plot import plot_coefficients, plot_sweep

    directory.mkdir(parents=True, exist_ok=True)
    paths = {kind: directory / f"search.{kind}" for kind in ("json", "md", "png")}
    record = search_record(result, context)
    paths["json"].write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(markdown(result, record), encoding="utf-8")
    gate = result.gate.describe()
    plot_sweep(
        rows_for_tables(result),
        paths["png"],
        gate=result.gate,
        parameter="trial",
        title=f"{result.plan.sweep.method}: search, {len(result.counted)} trials (gate: {gate})",
    )
    if result.chosen is not None:
        curves: dict[str, list[float]] = {}
        for dimension in result.plan.space.dimensions:
            params = result.chosen.params
            for group, values in dimension.gradients(params).items():
                curves[f"{dimension.name} ({group})"] = values
            if dimension.filters:  # the value on every tensor no filter names, flat over depth
                rest = float(dimension.value(params)[-1]["value"])
                curves[f"{dimension.name} (elsewhere)"] = [rest, rest]
        if curves:
            paths["coefficients"] = plot_coefficients(
                curves,
                directory / "search-coefficients.png",
                title=f"trial {result.chosen.number}: chosen values over depth",
            )
    return paths
