"""What a sweep tries: ``--set`` value ranges, the sweepable parameters, and the checked plan."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from mergekit_safety.core.acceptance import format_value
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.selection import GATE_KEYS

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
    "alpha": Sweepable("alpha", "global", -1, "α on the safety components added", unbounded=True),
    "eta": Sweepable("eta", "global", -1, "the entropy share that sets the safety rank"),
    "top_weight": Sweepable(
        "top_weight", "global", -1, "the leading safety direction's weight a₁", unbounded=True
    ),
    "budget": Sweepable("budget", "global", +1, "the safety budget s", unbounded=True),
}
GATE_CHOICES = GATE_KEYS
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
    check_alternatives(names)
    points = math.prod(len(values) for _name, values in assignments)
    if points > MAX_VALUES:
        raise ValueError(f"the grid has {points} points; at most {MAX_VALUES}")
    return assignments


def check_alternatives(names: Sequence[str]) -> None:
    """At most one of the gate's alternatives (threshold, top_k, fraction) is varied."""
    gates = [name for name in names if name in GATE_CHOICES]
    if len(gates) > 1:
        raise ValueError(
            f"{' and '.join(gates)} are alternatives (a threshold, or a count of matrices); "
            "vary one of them, with weight if you like"
        )


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

    from mergekit_safety.recipe import walk as recipes

    config = MergeConfiguration.model_validate(recipe)
    if not config.models:
        raise ConfigError("sweep and card handle recipes with `models:` (not slices or modules)")
    index = {id(scope.node): i for i, scope in enumerate(recipes.inputs(recipe))}
    return [(index[id(scope.node)], scope.reference, role) for scope, role in recipes.roles(recipe)]


def set_parameter(recipe: Mapping[str, Any], parameter: str, value: float) -> dict[str, Any]:
    """Copy ``recipe`` with ``weight`` set on each fine-tuned input, or a global parameter.

    Setting one of ``threshold``/``top_k``/``fraction`` removes the others from ``parameters``.
    """
    from mergekit_safety.recipe import walk as recipes

    sweepable = SWEEPABLE[parameter]
    number = int(value) if sweepable.integer else value
    if sweepable.scope == "global":
        return recipes.set_parameter(recipe, parameter, number)
    recipe_roles(recipe)  # a recipe with `models:` only, as before
    return recipes.set_parameter(recipe, parameter, number, "finetuned")


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

    from mergekit_safety.recipe.load import load_recipe

    config = load_recipe(recipe_path)  # exists, parses, local models exist
    recipe = yaml.safe_load(Path(recipe_path).read_text(encoding="utf-8"))
    from mergekit_safety.methods import method_names
    from mergekit_safety.methods.base import RoleCheckedMethod

    try:
        method = merge_methods.get(config.merge_method)
    except RuntimeError:
        raise ConfigError(f"unknown merge method {config.merge_method!r}") from None
    if not isinstance(method, RoleCheckedMethod):
        raise ConfigError(
            f"sweep understands {method_names()} recipes; {recipe_path} uses "
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
            _check_gate_choice(roles, parameter, method)
    plan = SweepPlan(
        recipe_path=Path(recipe_path),
        recipe=recipe,
        method=config.merge_method,
        parameters=tuple(name for name, _values in assignments),
        axes=tuple(tuple(values) for _name, values in assignments),
        aligned=reference_name(config.base_model),
        finetuned=tuple(reference_name(model) for model in finetuned),
    )
    if plan.values:  # a swept key the method would ignore here (safemerge's density): refused
        from mergekit_safety.recipe.keys import check_recipe_keys

        check_recipe_keys(plan.recipe_with(plan.values[0]))
    if any(model.lora is not None for model in config.referenced_models()):
        return plan  # LoRA inputs are merged later, in the run's cache; checked as they are
    if "top_k" in plan.parameters:  # every point above the rankable count would fail, later
        from mergekit_safety.recipe.scoring import check_top_k

        check_top_k(config, max(plan.axes[plan.parameters.index("top_k")]))
    check_finite_inputs(config)
    return plan


def check_finite_inputs(config: Any) -> None:
    """Every input model's tensors are finite: a NaN would fail every point of the sweep, after
    the references were evaluated. One read of each model, one tensor at a time."""
    from mergekit_safety import mergekit_internals

    for model in config.referenced_models():
        name = mergekit_internals.first_non_finite(model)
        if name is not None:
            raise ConfigError(
                f"{name} of {model} holds NaN or Inf values; nothing was merged (check that "
                "checkpoint)"
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


def _check_gate_choice(roles: list, parameter: str, method: Any) -> None:
    """A gate key swept without a gate (one set on a model is refused as the recipe is read)."""
    from mergekit_safety.recipe.keys import not_gated

    if not any(role == "unaligned" for _i, _m, role in roles):
        raise ConfigError(not_gated(method, parameter))


def reference_name(reference: Any) -> str:
    """A model's path, or ``model+lora`` for an adapter (merged into the work dir to evaluate)."""
    return str(reference) if reference.lora is not None else reference.model.path
