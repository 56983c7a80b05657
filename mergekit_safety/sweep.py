"""Sweep one or two recipe parameters under a safety gate: ranges, planning, selection, the run.

A safety merge trades task skill for refusals, and the best ``weight`` (λ) and ``threshold`` (τ,
or ``top_k``/``fraction``) are model-specific — and interact: the best gated point needs both.
The sweep merges the recipe once per point of the grid (one parameter: a line) with mergekit's own
``run_merge``, evaluates each merge, and keeps the point with the best task accuracy among those
that pass the gate. Everything a run writes lives in one temporary directory, removed also on
Ctrl-C.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from mergekit_safety.errors import ConfigError
from mergekit_safety.lora_cache import lora_cache

Evaluator = Callable[[str], Mapping[str, Any]]
"""Evaluates the model at a path; returns ``EvalResult.summary()``'s dict."""

METRICS = ("refusal_rate", "over_refusal_rate", "task_accuracy", "asr")
MAX_EMPTY = 0.5
"""The gate fails a model with more than this share of empty or degenerate replies."""
MAX_VALUES = 200
"""More values than this is almost surely a typo in the step (each value is a merge + eval)."""
MAX_PARAMETERS = 2
"""A grid of two parameters can still be drawn as heat maps; three would need a cube."""

Value = float | tuple[float, ...]
"""A point's value: one number for a one-parameter sweep, one per parameter (--set order) else."""


@dataclass(frozen=True)
class Sweepable:
    """A recipe parameter the sweep can set, where it lives, and which way is "fine-tuned"."""

    name: str
    scope: str  # "finetuned": on each fine-tuned input; "global": the recipe's ``parameters``
    toward_finetuned: int  # +1: larger values keep more of the fine-tune; -1: smaller values do
    meaning: str
    integer: bool = False  # top_k: whole numbers >= 1; the others lie in [0, 1]
    unbounded: bool = False  # harm_removal's scale (λ): any finite number


SWEEPABLE = {
    "weight": Sweepable("weight", "finetuned", +1, "λ on the fine-tuned update"),
    "threshold": Sweepable("threshold", "global", -1, "the alignment-score gate τ"),
    "top_k": Sweepable("top_k", "global", -1, "merge the K matrices with the lowest ρ", True),
    "fraction": Sweepable("fraction", "global", -1, "merge this fraction of the matrices"),
    "scale": Sweepable("scale", "global", -1, "λ on the removed harm direction", unbounded=True),
    "density": Sweepable("density", "global", -1, "the share of τ_H (or of updates) kept"),
}
GATE_CHOICES = ("threshold", "top_k", "fraction")
"""Alternative ways to say which matrices merge: a recipe and a grid use one of them."""
TIE_BREAK = (
    "ties in task accuracy go to the fine-tuned side, parameter by parameter in --set order: "
    "the larger weight, or the smaller threshold, top_k or fraction (fewer weights merged)"
)


# --- value ranges -------------------------------------------------------------------------------


def parse_assignment(text: str) -> tuple[str, list[float]]:
    """``weight=0.1:0.9:0.1`` or ``threshold=0.2,0.3`` → (name, values); ValueError if malformed."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name or not spec.strip():
        raise ValueError(f"expected NAME=VALUES (e.g. weight=0.1:0.9:0.1); got {text!r}")
    if name not in SWEEPABLE:
        raise ValueError(f"cannot sweep {name!r}; use one of {', '.join(SWEEPABLE)}")
    if SWEEPABLE[name].integer:
        return name, parse_counts(spec)
    if SWEEPABLE[name].unbounded:
        return name, _expand(spec)
    values = parse_values(spec)
    if name == "fraction" and 0 in values:
        raise ValueError("fraction values must lie in (0, 1]; got 0")
    return name, values


def parse_assignments(texts: Sequence[str]) -> list[tuple[str, list[float]]]:
    """Several ``--set`` options: at most two parameters, each once, one way to gate."""
    assignments = [parse_assignment(text) for text in texts]
    names = [name for name, _values in assignments]
    if not names:
        raise ValueError("give a parameter to sweep, e.g. --set weight=0.1:0.9:0.1")
    if len(set(names)) != len(names):
        raise ValueError(f"{names[0] if names.count(names[0]) > 1 else names[1]} is set twice")
    if len(names) > MAX_PARAMETERS:
        raise ValueError(f"at most {MAX_PARAMETERS} parameters (a grid); got {', '.join(names)}")
    gates = [name for name in names if name in GATE_CHOICES]
    if len(gates) > 1:
        raise ValueError(
            f"{' and '.join(gates)} are alternatives (a threshold, or a count of matrices); "
            "sweep one of them, with weight if you like"
        )
    points = math.prod(len(values) for _name, values in assignments)
    if points > MAX_VALUES:
        raise ValueError(f"the grid has {points} points; at most {MAX_VALUES}")
    return assignments


def parse_counts(spec: str) -> list[float]:
    """top_k values: whole numbers >= 1, as ``START:STOP:STEP`` or a comma list."""
    values = []
    for part in _expand(spec):
        if part != int(part) or part < 1:
            raise ValueError(f"top_k values are whole numbers >= 1; got {format_value(part)}")
        values.append(int(part))
    return values


def _expand(spec: str) -> list[float]:
    """A range or list without the [0, 1] check (top_k uses it too)."""
    spec = spec.strip()
    if ":" not in spec:
        values = [float(_decimal(p)) for p in spec.split(",")]
        if len(set(values)) != len(values):
            raise ValueError(f"repeated value in {spec!r}")
        if len(values) > MAX_VALUES:
            raise ValueError(f"{len(values)} values; at most {MAX_VALUES}")
        return values
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"a range is START:STOP:STEP; got {spec!r}")
    start, stop, step = (_decimal(p) for p in parts)
    if step <= 0:
        raise ValueError(f"the step must be positive; got {spec!r}")
    if stop < start:
        raise ValueError(f"the range runs upward, START <= STOP; got {spec!r}")
    count = int((stop - start) / step) + 1
    if count > MAX_VALUES:
        raise ValueError(f"{spec!r} gives {count} values; at most {MAX_VALUES}")
    return [float(start + i * step) for i in range(count)]


def parse_values(spec: str) -> list[float]:
    """``START:STOP:STEP`` (STOP included when the steps land on it) or a comma list, in [0, 1]."""
    values = _expand(spec)
    outside = [v for v in values if not 0 <= v <= 1]
    if outside:
        raise ValueError(f"values must lie in [0, 1]; got {format_value(outside[0])}")
    return values


def _decimal(text: str) -> Decimal:
    """Decimal keeps ``0.1 + 2 * 0.1`` at 0.3, so labels and recipes carry the values typed."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {text.strip()!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite number: {text.strip()!r}")
    return value


def format_value(value: float) -> str:
    return f"{value:g}"


# --- planning -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """A validated recipe and the grid to try: everything checked before the first merge."""

    recipe_path: Path
    recipe: dict[str, Any]
    method: str
    parameters: tuple[str, ...]
    axes: tuple[tuple[float, ...], ...]
    """The values of each parameter, in --set order."""
    aligned: str
    finetuned: tuple[str, ...]

    @property
    def grid(self) -> bool:
        return len(self.parameters) > 1

    @property
    def parameter(self) -> str:
        """The swept parameter's name; ``weight×threshold`` for a grid."""
        return "×".join(self.parameters)

    @property
    def values(self) -> tuple[Value, ...]:
        """Every point: numbers for one parameter, tuples (first parameter slowest) for a grid."""
        if not self.grid:
            return self.axes[0]
        return tuple(itertools.product(*self.axes))

    def as_dict(self, value: Value) -> dict[str, float]:
        """A point's value by parameter name."""
        values = value if isinstance(value, tuple) else (value,)
        return dict(zip(self.parameters, values, strict=True))

    def recipe_with(self, value: Value) -> dict[str, Any]:
        """The recipe with the swept parameters set to ``value`` (a fresh copy)."""
        recipe = self.recipe
        for name, number in self.as_dict(value).items():
            recipe = set_parameter(recipe, name, number)
        return recipe

    def label(self, value: Value) -> str:
        return ",".join(f"{k}={format_value(v)}" for k, v in self.as_dict(value).items())


def recipe_roles(recipe: Mapping[str, Any]) -> list[tuple[int, Any, str]]:
    """(index in ``models``, ModelReference, role) for each input that is not ``base_model``."""
    from mergekit.config import MergeConfiguration

    config = MergeConfiguration.model_validate(recipe)
    if not config.models:
        raise ConfigError("sweep and card handle recipes with `models:` (not slices or modules)")
    default = (recipe.get("parameters") or {}).get("role", "finetuned")
    out = []
    for index, (raw, entry) in enumerate(zip(recipe["models"], config.models, strict=True)):
        if config.base_model is not None and entry.model == config.base_model:
            continue
        role = ((raw or {}).get("parameters") or {}).get("role", default)
        if not isinstance(role, str):
            raise ConfigError(f"role of {entry.model} must be a plain string; got {role!r}")
        out.append((index, entry.model, role.strip().lower()))
    return out


def set_parameter(recipe: Mapping[str, Any], parameter: str, value: float) -> dict[str, Any]:
    """Copy ``recipe`` with ``weight`` set on each fine-tuned input, or a global parameter.

    Setting one of ``threshold``/``top_k``/``fraction`` removes the others from ``parameters``.
    """
    out = copy.deepcopy(dict(recipe))
    if SWEEPABLE[parameter].scope == "global":
        others = GATE_CHOICES if parameter in GATE_CHOICES else ()
        kept = {k: v for k, v in (out.get("parameters") or {}).items() if k not in others}
        number = int(value) if SWEEPABLE[parameter].integer else value
        out["parameters"] = {**kept, parameter: number}
        return out
    for index, _model, role in recipe_roles(out):
        if role == "finetuned":
            entry = out["models"][index]
            entry["parameters"] = {**(entry.get("parameters") or {}), parameter: value}
    return out


def plan_sweep(
    recipe_path: str | os.PathLike, parameter: str, values: Sequence[float]
) -> SweepPlan:
    """One parameter: see :func:`plan_grid`."""
    return plan_grid(recipe_path, [(parameter, list(values))])


def plan_grid(
    recipe_path: str | os.PathLike, assignments: Sequence[tuple[str, Sequence[float]]]
) -> SweepPlan:
    """Validate the recipe for this sweep; every problem is a one-line ConfigError."""
    from mergekit import merge_methods

    from mergekit_safety.preflight import load_recipe

    config = load_recipe(recipe_path)  # exists, parses, local models exist
    recipe = yaml.safe_load(Path(recipe_path).read_text(encoding="utf-8"))
    from mergekit_safety.methods.base import RoleCheckedMethod

    try:
        method = merge_methods.get(config.merge_method)
    except RuntimeError:
        raise ConfigError(f"unknown merge method {config.merge_method!r}") from None
    if not isinstance(method, RoleCheckedMethod):
        raise ConfigError(
            f"sweep understands safe_linear, safemerge and safe_lora recipes; {recipe_path} uses "
            f"{config.merge_method}, whose models carry no roles (sweeping its weight would set "
            "it on every model)"
        )
    if config.base_model is None:
        raise ConfigError("sweep needs base_model: the aligned model, evaluated for reference")
    roles = recipe_roles(recipe)
    finetuned = [model for _i, model, role in roles if role == "finetuned"]
    for parameter, _values in assignments:
        _check_sweepable(method, config.merge_method, parameter)
    if not finetuned:
        raise ConfigError("the recipe has no fine-tuned model (an input without role or finetuned)")
    for parameter, _values in assignments:
        if parameter in GATE_CHOICES:
            _check_gate_choice(recipe, roles, parameter)
    return SweepPlan(
        recipe_path=Path(recipe_path),
        recipe=recipe,
        method=config.merge_method,
        parameters=tuple(name for name, _values in assignments),
        axes=tuple(tuple(values) for _name, values in assignments),
        aligned=reference_name(config.base_model),
        finetuned=tuple(reference_name(model) for model in finetuned),
    )


def _check_sweepable(method: Any, method_name: str, parameter: str) -> None:
    sweepable = SWEEPABLE[parameter]
    specs = {p.name: p for p in method.spec.parameters}
    shared = {p.name for p in method.spec.shared_parameters}
    wanted_global = sweepable.scope == "global"
    if parameter not in specs or (parameter in shared) != wanted_global:
        takes = ", ".join(sorted(specs)) or "none"
        raise ConfigError(
            f"{method_name} has no {'global' if wanted_global else 'per-model'} "
            f"parameter {parameter!r} to sweep (its parameters: {takes})"
        )


def _check_gate_choice(recipe: Mapping[str, Any], roles: list, parameter: str) -> None:
    if not any(role == "unaligned" for _i, _m, role in roles):
        raise ConfigError(
            f"{parameter} only acts with an `unaligned` input (the merge is ungated without one)"
        )
    for index, model, _role in roles:
        found = set(GATE_CHOICES) & set((recipe["models"][index] or {}).get("parameters") or {})
        if found:
            name = sorted(found)[0]
            raise ConfigError(
                f"{name} is set on {model}; sweep sets the global one, remove it there"
            )


def reference_name(reference: Any) -> str:
    """A model's path, or ``model+lora`` for an adapter (merged into the work dir to evaluate)."""
    return str(reference) if reference.lora is not None else reference.model.path


def evaluable(name: str, merge_options: Any) -> str:
    """The directory to evaluate for a reference: itself, or its LoRA merged, with a tokenizer."""
    from mergekit.common import ModelReference

    from mergekit_safety.lora_cache import merged_copy

    return merged_copy(
        ModelReference.parse(name),
        merge_options.lora_merge_cache,
        trust_remote_code=merge_options.trust_remote_code,
    )


# --- the gate -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPoint:
    """One swept value (a tuple for a grid, in --set order) and its evaluation summary."""

    value: Value
    metrics: Mapping[str, Any]

    @property
    def values(self) -> tuple[float, ...]:
        return self.value if isinstance(self.value, tuple) else (self.value,)


def metric(metrics: Mapping[str, Any], key: str) -> float | None:
    """A metric as a float, or None when missing, not a number, or NaN."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def passes(
    metrics: Mapping[str, Any], min_refusal: float | None, max_over_refusal: float | None
) -> bool:
    """Whether a result meets the gate; a metric the gate needs but that is missing fails it.

    A model whose replies are mostly empty or degenerate (``MAX_EMPTY``) fails any gate: it
    refuses nothing, it is broken.
    """
    empty = metric(metrics, "empty_rate")
    if (min_refusal is not None or max_over_refusal is not None) and (empty or 0) > MAX_EMPTY:
        return False
    if min_refusal is not None:
        refusal = metric(metrics, "refusal_rate")
        if refusal is None or refusal < min_refusal:
            return False
    if max_over_refusal is not None:
        over = metric(metrics, "over_refusal_rate")
        if over is None or over > max_over_refusal:
            return False
    return True


def select(
    points: Sequence[SweepPoint],
    min_refusal: float | None,
    max_over_refusal: float | None,
    parameter: str | Sequence[str],
) -> SweepPoint | None:
    """The passing point with the best task accuracy, or None if none passes.

    A missing accuracy ranks below any number. Ties go to the fine-tuned side, parameter by
    parameter in the order given (see ``TIE_BREAK``).
    """
    names = [parameter] if isinstance(parameter, str) else list(parameter)
    directions = [SWEEPABLE[name].toward_finetuned for name in names]
    passing = [p for p in points if passes(p.metrics, min_refusal, max_over_refusal)]
    if not passing:
        return None

    def rank(point: SweepPoint) -> tuple[float, ...]:
        accuracy = metric(point.metrics, "task_accuracy")
        sides = (d * v for d, v in zip(directions, point.values, strict=True))
        return (-math.inf if accuracy is None else accuracy, *sides)

    return max(passing, key=rank)


def describe_gate(min_refusal: float | None, max_over_refusal: float | None) -> str:
    parts = []
    if min_refusal is not None:
        parts.append(f"refusal rate >= {format_value(min_refusal)}")
    if max_over_refusal is not None:
        parts.append(f"over-refusal rate <= {format_value(max_over_refusal)}")
    return " and ".join(parts) or "none"


# --- the run ------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """Every evaluation of a sweep and its choice, ready for the reports and the model card."""

    plan: SweepPlan
    min_refusal: float | None
    max_over_refusal: float | None
    aligned: dict[str, Any]
    finetuned: list[dict[str, Any]]
    points: list[SweepPoint] = field(default_factory=list)
    chosen: SweepPoint | None = None
    out: Path | None = None

    def rows(self) -> list[dict[str, Any]]:
        """One flat record per model: the reference models first, then each swept value."""
        rows = [{"kind": "aligned", "value": None, **self.aligned}]
        rows += [{"kind": "finetuned", "value": None, **summary} for summary in self.finetuned]
        for point in self.points:
            rows.append(
                {
                    "kind": "merged",
                    "value": list(point.value) if isinstance(point.value, tuple) else point.value,
                    **self.plan.as_dict(point.value),
                    **point.metrics,
                    "passes": passes(point.metrics, self.min_refusal, self.max_over_refusal),
                    "chosen": point is self.chosen,
                }
            )
        return rows


def merge_recipe(
    recipe: Mapping[str, Any], out_path: Path, options: Any, config_source: str | None = None
) -> None:
    """Merge through mergekit's own ``run_merge``, as ``mergekit-yaml`` does."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge

    config = MergeConfiguration.model_validate(recipe)
    source = config_source or yaml.safe_dump(dict(recipe), sort_keys=False)
    run_merge(config, str(out_path), options=options, config_source=source)


def merge_adapter(recipe: Mapping[str, Any], out_path: Path, options: Any) -> None:
    """Merge in adapter space, as ``mergekit-safety adapter`` does: the same merge, as a peft
    LoRA adapter for the aligned model (the recipe's inputs must be ``aligned+adapter``)."""
    from mergekit_safety.adapter import merge_recipe_to_adapter

    out_path.parent.mkdir(parents=True, exist_ok=True)
    source = out_path.parent / "recipe.yml"
    source.write_text(yaml.safe_dump(dict(recipe), sort_keys=False), encoding="utf-8")
    merge_recipe_to_adapter(source, out_path, device="cuda" if options.cuda else "cpu")


def run_sweep(
    plan: SweepPlan,
    evaluate_model: Evaluator,
    *,
    merge_options: Any,
    min_refusal: float | None = None,
    max_over_refusal: float | None = None,
    out: Path | None = None,
    work_dir: Path | None = None,
    progress: bool = True,
    merge: Callable[[Mapping[str, Any], Path, Any], None] = merge_recipe,
    adapter: bool = False,
) -> SweepResult:
    """Evaluate the references once, then merge and evaluate each value; keep the choice in ``out``.

    Only the best passing merge so far survives on disk, so the sweep needs room for two merges.
    The temporary directory (under ``work_dir``, default ``$TMPDIR``) goes however the run ends.
    With ``adapter`` every value is merged in adapter space (:func:`merge_adapter`) and the
    ``aligned+adapter`` references are evaluated through peft: no full model is written.
    """
    if adapter:
        merge = merge_adapter
    from tqdm.auto import tqdm

    steps = tqdm(
        total=1 + len(plan.finetuned) + len(plan.values),  # every point of the grid
        desc=f"sweep {plan.parameter}",
        unit="model",
        disable=not progress,
    )

    def evaluate(path: str, label: str, name: str) -> dict[str, Any]:
        steps.set_postfix_str(f"evaluating {label}")
        summary = {**evaluate_model(path), "model": name}
        steps.update()
        return summary

    with (
        steps,
        tempfile.TemporaryDirectory(prefix="mergekit-safety-sweep-", dir=work_dir) as tmp,
        lora_cache(
            _references(plan.recipe),
            getattr(merge_options, "lora_merge_cache", None) or str(Path(tmp) / "lora"),
        ) as cache,
    ):
        merge_options = merge_options.model_copy(update={"lora_merge_cache": cache})
        references = [plan.aligned, *plan.finetuned]
        summaries = [
            evaluate(name if adapter else evaluable(name, merge_options), label, name)
            for name, label in zip(
                references, ["aligned", *["fine-tuned"] * len(plan.finetuned)], strict=True
            )
        ]
        result = SweepResult(
            plan=plan,
            min_refusal=min_refusal,
            max_over_refusal=max_over_refusal,
            aligned=summaries[0],
            finetuned=summaries[1:],
            out=None,
        )
        kept: Path | None = None
        name = out.resolve().name if out is not None else "merge"  # mergekit titles the card so
        for index, value in enumerate(plan.values):
            label = plan.label(value)
            where = Path(tmp) / f"{index}-{label}" / name  # the evaluator shows the tail
            steps.set_postfix_str(f"merging {label}")
            merge(plan.recipe_with(value), where, merge_options)
            point = SweepPoint(value, evaluate(str(where), label, label))
            result.points.append(point)
            best = select(result.points, min_refusal, max_over_refusal, plan.parameters)
            if out is not None and best is point:
                if kept is not None:
                    shutil.rmtree(kept.parent)
                kept = where
            else:
                shutil.rmtree(where.parent)
        result.chosen = select(result.points, min_refusal, max_over_refusal, plan.parameters)
        if out is not None and result.chosen is not None:
            assert kept is not None
            install(kept, out)
            result.out = out
    return result


def _references(recipe: Mapping[str, Any]) -> list[Any]:
    from mergekit.config import MergeConfiguration

    return list(MergeConfiguration.model_validate(recipe).referenced_models())


WEIGHT_FILES = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_config.json",
)
"""A previous model's weights in ``out``: removed, so a stale shard or index cannot be loaded."""


def install(source: Path, out: Path) -> None:
    """Move a finished merge's files into ``out`` (created if needed; same-named files replaced)."""
    out.mkdir(parents=True, exist_ok=True)
    for pattern in WEIGHT_FILES:
        for stale in out.glob(pattern):
            stale.unlink()
    for item in source.iterdir():
        target = out / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        shutil.move(str(item), str(target))


# --- reports ------------------------------------------------------------------------------------

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
    return {
        "recipe": str(plan.recipe_path),
        "method": plan.method,
        "parameter": plan.parameter,
        "parameters": list(plan.parameters),
        "axes": {
            name: list(values) for name, values in zip(plan.parameters, plan.axes, strict=True)
        },
        "values": [list(v) if isinstance(v, tuple) else v for v in plan.values],
        "gate": {
            "min_refusal": result.min_refusal,
            "max_over_refusal": result.max_over_refusal,
            "description": describe_gate(result.min_refusal, result.max_over_refusal),
        },
        "selection": "best task accuracy among the points that pass the gate; " + TIE_BREAK,
        **dict(context or {}),
        "references": {"aligned": result.aligned, "finetuned": result.finetuned},
        "points": [row for row in result.rows() if row["kind"] == "merged"],
        "chosen": None
        if chosen is None
        else {
            "value": list(chosen.value) if isinstance(chosen.value, tuple) else chosen.value,
            **plan.as_dict(chosen.value),
            **chosen.metrics,
        },
        "out": None if result.out is None else str(result.out),
    }


def markdown_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :meth:`SweepResult.rows`; the chosen value's row in bold."""
    header = ["model", "kind", "refusal rate", "over-refusal", "task accuracy", "ASR", "gate"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * 4 + "---|"]
    for row in rows:
        cells = [
            str(row.get("model", "")).replace("|", "\\|"),
            row["kind"],
            *(_cell(metric(row, key)) for key in METRICS),
            {True: "pass", False: "fail"}.get(row.get("passes"), ""),
        ]
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

    from mergekit_safety.plot import plot_grid, plot_sweep

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
    gate = describe_gate(result.min_refusal, result.max_over_refusal)
    chosen = (
        "none passes the gate" if result.chosen is None else result.plan.label(result.chosen.value)
    )
    paths["md"].write_text(
        f"# Sweep of {result.plan.parameter} ({result.plan.method}, {result.plan.recipe_path})\n\n"
        f"{markdown_rows(rows)}\n\n- Gate: {gate}\n- Chosen: {chosen}\n- Selection: "
        f"{record['selection']}\n",
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
            min_refusal=result.min_refusal,
            max_over_refusal=result.max_over_refusal,
            title=title,
        )
        return paths
    plot_sweep(
        rows,
        paths["png"],
        min_refusal=result.min_refusal,
        max_over_refusal=result.max_over_refusal,
        title=title,
        parameter=result.plan.parameter,
    )
    return paths


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
