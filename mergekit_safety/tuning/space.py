"""What a search varies: recipe parameters with ranges, global or as per-layer gradients.

Each dimension names a parameter ``sweep --set`` takes (``weight``, ``threshold``, ``top_k``,
``fraction``, ``scale``, ``density``: :data:`~mergekit_safety.tuning.grid.SWEEPABLE`, which also
says where it lives) and a range. A per-model parameter (``weight``) may instead be a gradient:
``anchors: N`` values spread evenly over depth, one list per ``filters`` entry, written in
mergekit's own syntax — on each fine-tuned input
``weight: [{filter: self_attn, value: [a0, …]}, {filter: mlp, value: [b0, …]}, {value: c}]`` —
which mergekit interpolates linearly between the anchors over the layers (``t = layer /
(layers − 1)``) and applies to the tensors whose name contains the filter; ``c`` (``rest``) covers
every other tensor (embeddings, norms). A recipe-wide parameter has one value for the model.

Two ways to write a space: a YAML mapping (``--space``)::

    weight: {low: 0, high: 1, anchors: 4, filters: [self_attn, mlp], rest: 0.7}
    threshold: {low: 0.1, high: 0.6, step: 0.05}

and the ``--param`` shorthand ``NAME=LOW:HIGH[:STEP|:log][@N[/FILTER,…]]``, e.g.
``weight=0:1`` or ``weight=0:1@4/self_attn,mlp``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergekit_safety.core.errors import ConfigError

KEYS = ("low", "high", "log", "step", "int", "anchors", "filters", "rest")
"""What a dimension of a space YAML may hold."""
MAX_ANCHORS = 16
SEARCHED = "search"
"""``rest: search``: the value off every filter is searched too."""


@dataclass(frozen=True)
class Dimension:
    """One recipe parameter searched over ``[low, high]``: one value, or a gradient per filter."""

    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False
    anchors: int | None = None
    """Values over depth per filter (a per-layer gradient); None: one value for the model."""
    filters: tuple[str, ...] = ()
    rest: float | str | None = None
    """A gradient's value off every filter: a number, ``search``, or None (the recipe's own)."""

    @property
    def per_layer(self) -> bool:
        return self.anchors is not None

    def keys(self) -> list[str]:
        """The sampler's parameter names for this dimension, in order."""
        if not self.per_layer:
            return [self.name]
        assert self.anchors is not None
        groups = self.filters or ("all",)
        keys = [f"{self.name}.{group}.{i}" for group in groups for i in range(self.anchors)]
        return keys + ([f"{self.name}.rest"] if self.filters and self.rest == SEARCHED else [])

    def value(self, params: Mapping[str, float]) -> Any:
        """The recipe value for sampled ``params``: a number, a gradient, or filtered gradients."""
        if not self.per_layer:
            return self._number(params[self.name])
        assert self.anchors is not None
        lists = {
            group: [self._number(params[f"{self.name}.{group}.{i}"]) for i in range(self.anchors)]
            for group in (self.filters or ("all",))
        }
        if not self.filters:
            return lists["all"]
        rest = params[f"{self.name}.rest"] if self.rest == SEARCHED else self.rest
        entries: list[dict[str, Any]] = [{"filter": f, "value": lists[f]} for f in self.filters]
        return [*entries, {"value": self._number(rest)}]

    def gradients(self, params: Mapping[str, float]) -> dict[str, list[float]]:
        """The anchor values per filter (``all`` without filters); {} for a global value."""
        if not self.per_layer:
            return {}
        assert self.anchors is not None
        return {
            group: [float(params[f"{self.name}.{group}.{i}"]) for i in range(self.anchors)]
            for group in (self.filters or ("all",))
        }

    def _number(self, value: Any) -> Any:
        return int(value) if self.integer else float(value)

    def describe(self) -> str:
        span = f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")
        span += f" step {self.step:g}" if self.step else ""
        if not self.per_layer:
            return f"{self.name} ∈ {span}"
        where = f" for {', '.join(self.filters)}" if self.filters else ""
        rest = ""
        if self.filters:
            rest = f", elsewhere {'searched' if self.rest == SEARCHED else f'{self.rest:g}'}"
        return f"{self.name} ∈ {span}: {self.anchors} anchors over depth{where}{rest}"

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name, "low": self.low, "high": self.high, "log": self.log,
            "step": self.step, "int": self.integer, "anchors": self.anchors,
            "filters": list(self.filters), "rest": self.rest,
        }  # fmt: skip


@dataclass(frozen=True)
class Space:
    dimensions: tuple[Dimension, ...] = field(default_factory=tuple)

    def keys(self) -> list[str]:
        return [key for dimension in self.dimensions for key in dimension.keys()]

    def names(self) -> list[str]:
        return [dimension.name for dimension in self.dimensions]


# --- parsing ------------------------------------------------------------------------------------

_SHORTHAND = re.compile(
    r"^(?P<name>[A-Za-z_]\w*)=(?P<low>[^:@]+):(?P<high>[^:@]+)(?::(?P<third>[^:@]+))?"
    r"(?:@(?P<anchors>\d+)(?:/(?P<filters>[^@]+))?)?$"
)


def parse_param(text: str) -> Dimension:
    """``NAME=LOW:HIGH[:STEP|:log][@N[/FILTER,…]]`` → a dimension (checked later against the
    recipe); ConfigError if malformed."""
    found = _SHORTHAND.match(text.replace(" ", ""))
    if found is None:
        raise ConfigError(
            f"--param: expected NAME=LOW:HIGH[:STEP|:log][@N[/FILTER,...]] (e.g. weight=0:1 or "
            f"weight=0:1@4/self_attn,mlp); got {text!r}"
        )
    entry: dict[str, Any] = {"low": found["low"], "high": found["high"]}
    third = found["third"]
    if third is not None:
        entry["log" if third == "log" else "step"] = True if third == "log" else third
    if found["anchors"] is not None:
        entry["anchors"] = found["anchors"]
        if found["filters"]:
            entry["filters"] = found["filters"].split(",")
    return _dimension(found["name"], entry, "--param")


def load_space(path: str | Path) -> list[Dimension]:
    """A space YAML: ``NAME: {low, high, ...}`` per dimension (under ``parameters:`` or not)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--space: no such file: {path}")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"--space {path}: not valid YAML ({error})".splitlines()[0]) from None
    if isinstance(raw, Mapping) and set(raw) == {"parameters"}:
        raw = raw["parameters"]
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"--space {path}: expected a mapping NAME: {{low: …, high: …}}")
    return [_dimension(str(name), entry, f"--space {path}") for name, entry in raw.items()]


def _dimension(name: str, entry: Any, where: str) -> Dimension:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: {name}: expected a mapping with low and high; got {entry!r}")
    unknown = [key for key in entry if key not in KEYS]
    if unknown:
        raise ConfigError(f"{where}: {name}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    for key in ("low", "high"):
        if key not in entry:
            raise ConfigError(f"{where}: {name}: needs {key}")
    low, high = (_number(entry[key], f"{where}: {name}: {key}") for key in ("low", "high"))
    step = None if entry.get("step") is None else _number(entry["step"], f"{where}: {name}: step")
    anchors = entry.get("anchors")
    if anchors is not None:
        anchors = _count(anchors, f"{where}: {name}: anchors")
    filters = entry.get("filters") or ()
    if isinstance(filters, str):
        filters = [filters]
    if not isinstance(filters, Sequence) or not all(isinstance(f, str) and f for f in filters):
        raise ConfigError(f"{where}: {name}: filters are tensor-name parts, e.g. [self_attn, mlp]")
    rest = entry.get("rest")
    if rest is not None and rest != SEARCHED:
        rest = _number(rest, f"{where}: {name}: rest")
    return Dimension(
        name=name, low=low, high=high, log=bool(entry.get("log", False)), step=step,
        integer=bool(entry.get("int", False)), anchors=anchors, filters=tuple(filters), rest=rest,
    )  # fmt: skip


def _number(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: not a number: {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ConfigError(f"{where}: not a finite number: {value!r}")
    return number


def _count(value: Any, where: str) -> int:
    number = _number(value, where)
    if number != int(number) or not 2 <= number <= MAX_ANCHORS:
        raise ConfigError(f"{where}: a whole number from 2 to {MAX_ANCHORS}; got {value!r}")
    return int(number)


# --- checking against the recipe ----------------------------------------------------------------


def check_space(dimensions: Sequence[Dimension], recipe_path: str | Path) -> tuple[Space, Any]:
    """Check the space against the recipe before any work: (the space, the sweep plan of it).

    Every problem is one ConfigError line: an unknown or repeated parameter, one the recipe's
    method does not take there, two alternatives of the gate, anchors on a recipe-wide
    parameter, bounds outside the parameter's domain (:mod:`mergekit_safety.core.parameters`).
    """
    from mergekit import merge_methods

    from mergekit_safety.tuning.grid import SWEEPABLE, check_alternatives, plan_grid

    if not dimensions:
        raise ConfigError("nothing to search: give --space FILE or --param NAME=LOW:HIGH")
    names = [d.name for d in dimensions]
    for name in names:
        if name not in SWEEPABLE:
            raise ConfigError(f"cannot search {name!r}; use one of {', '.join(SWEEPABLE)}")
        if names.count(name) > 1:
            raise ConfigError(f"{name} is given twice (--space and --param together count)")
    try:
        check_alternatives(names)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    plan = plan_grid(recipe_path, [(d.name, [d.low, d.high]) for d in dimensions])
    _check_filters(dimensions, plan.recipe)
    method = merge_methods.get(plan.method)
    specs = {spec.name: spec for spec in method.spec.parameters}
    checked = []
    for dimension in dimensions:
        sweepable = SWEEPABLE[dimension.name]
        dimension = _typed(dimension, sweepable.integer)
        if dimension.per_layer and sweepable.scope == "global":
            raise ConfigError(
                f"{dimension.name} is recipe-wide (one value for the whole model): anchors and "
                "filters apply to per-model parameters (weight)"
            )
        if dimension.filters and dimension.rest is None:
            dimension = _with_recipe_rest(dimension, plan.recipe)
        for value in _bounds(dimension):
            _check_domain(plan.method, specs[dimension.name], dimension.name, value, plan.recipe)
        checked.append(dimension)
    return Space(tuple(checked)), plan


def _check_filters(dimensions: Sequence[Dimension], recipe: Mapping[str, Any]) -> None:
    """Each filter matches some tensor of the base model (from its file headers): a filter that
    matches none would leave those anchors unused and the search varying nothing there."""
    from mergekit.common import ModelReference

    from mergekit_safety import mergekit_internals
    from mergekit_safety.recipe.keys import check_filter

    filtered = [d for d in dimensions if d.filters]
    if not filtered:
        return
    base = ModelReference.model_validate(recipe["base_model"])
    names = mergekit_internals.tensor_shapes(base)
    for dimension in filtered:
        for text in dimension.filters:
            check_filter(text, names, base, f"{dimension.name} (search space)")


def _typed(dimension: Dimension, integer: bool) -> Dimension:
    where = f"{dimension.name}"
    if dimension.low >= dimension.high:
        raise ConfigError(f"{where}: low must be below high; got [{dimension.low:g}, "
                          f"{dimension.high:g}]")  # fmt: skip
    if dimension.log and dimension.low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0; got {dimension.low:g}")
    if dimension.log and dimension.step is not None:
        raise ConfigError(f"{where}: give a step or log, not both")
    if dimension.step is not None and not 0 < dimension.step <= dimension.high - dimension.low:
        raise ConfigError(f"{where}: the step must lie in (0, high − low]; got {dimension.step:g}")
    if dimension.integer and not integer:
        raise ConfigError(f"{where}: takes any number in its range, not only whole ones")
    if integer:
        if dimension.low != int(dimension.low) or dimension.high != int(dimension.high):
            raise ConfigError(f"{where}: whole numbers; got [{dimension.low:g}, "
                              f"{dimension.high:g}]")  # fmt: skip
        step = dimension.step or 1
        if step != int(step):
            raise ConfigError(f"{where}: a whole step; got {step:g}")
        return Dimension(**{**dimension.__dict__, "integer": True, "step": step})
    return dimension


def _bounds(dimension: Dimension) -> list[float]:
    values = [dimension.low, dimension.high]
    if isinstance(dimension.rest, float):
        values.append(dimension.rest)
    return values


def _with_recipe_rest(dimension: Dimension, recipe: Mapping[str, Any]) -> Dimension:
    """``rest`` not given: the recipe's own value if every fine-tune has the same number."""
    from mergekit_safety.recipe.walk import get_parameter

    values = get_parameter(recipe, dimension.name, "finetuned")
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    rest: float | str = float(values[0]) if numeric and len(set(values)) == 1 else SEARCHED
    return Dimension(**{**dimension.__dict__, "rest": rest})


def _check_domain(method: str, spec: Any, name: str, value: float, recipe: Mapping) -> None:
    """``value`` passes the parameter's domain and the rules between parameters (extrapolation)."""
    import functools

    from pydantic import ValidationError

    from mergekit_safety.core.parameters import check_parameters, domain_error
    from mergekit_safety.recipe.keys import ours
    from mergekit_safety.recipe.walk import get_parameter

    try:
        spec.validate(int(value) if spec.name == "top_k" else value)
    except ValidationError as error:
        raise ConfigError(f"search range of {domain_error(name, error)}") from None
    extrapolate = {"allow_extrapolation": get_parameter(recipe, "allow_extrapolation") or False}
    rules = ours(method)  # the shared rules between parameters, then the method's own
    check = rules.check_values if rules is not None else functools.partial(check_parameters, method)
    if name == "weight":
        check(extrapolate, {"the fine-tuned model": {"weight": value}})
    else:
        check({**extrapolate, name: value}, {})
