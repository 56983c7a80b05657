"""The methods' parameters: each one's domain and default, in one table, and the rules between them.

A value outside its domain is a merge the user did not mean, and for a safety tool the worst
outcome is a silent one: ``threshold: -1`` returns the unsafe fine-tune bit for bit, ``weight: 5``
gives θ_a + 5Δ. So: τ lies in [0, 1] (ρ is the cosine of an update and its projection onto a PSD
subspace, never negative); ``density`` lies in (0, 1]; weights, λ (``scale``) and α are finite,
α ≥ 0; ``k`` is a whole number ≥ 0; a boolean is no number.

Those domains are pydantic constraints on the kernels' arguments (:data:`Threshold` etc.):
mergekit 0.1.5 validates every value against its ``ParameterSpec`` both where it plans a recipe
(``parameter_resolver.resolve_parameter``, before a tensor loads; our resolver wrapper turns the
error into one line) and where the Python API binds (``MergeMethod.bind``; the methods call
:func:`check_domains` first for the same line). What a constraint cannot say is
:func:`check_parameters`: weights outside [0, 1] only with ``allow_extrapolation: true`` (then a
warning); a method's own rules are its ``check_values`` (LoX: a large α warns).
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Annotated, Any

from mergekit.merge_methods.base import ParameterScope, ParameterSpec, PerGroupValues
from pydantic import BeforeValidator, Field, ValidationError
from pydantic_core import PydanticCustomError

from mergekit_safety.core import runs
from mergekit_safety.core.errors import ConfigError, find_config_error
from mergekit_safety.core.roles import Role

# --- defaults -----------------------------------------------------------------------------------

DEFAULT_THRESHOLD = 0.35
"""τ of the gated methods (those whose ``decide`` gates by ρ). Each method's other defaults are
its kernel's arguments, in its own module (:mod:`mergekit_safety.methods`)."""

# --- domains ------------------------------------------------------------------------------------


def _not_bool(value: Any) -> Any:
    """Refuse ``true``/``false`` where a number belongs (pydantic's lax mode reads them as 1/0)."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "Input should be a number, not a boolean")
    return value


_NUMBER = BeforeValidator(_not_bool)
Threshold = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False), _NUMBER]
"""τ ∈ [0, 1]."""
Density = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False), _NUMBER]
"""The kept share, in (0, 1]."""
Weight = Annotated[float, Field(allow_inf_nan=False), _NUMBER]
"""A finite λ; outside [0, 1] only with ``allow_extrapolation`` (:func:`check_parameters`)."""
Scale = Annotated[float, Field(allow_inf_nan=False), _NUMBER]
"""harm_removal's λ: any finite number."""
Alpha = Annotated[float, Field(ge=0, allow_inf_nan=False), _NUMBER]
"""An α, finite and ≥ 0 (LoX's past :data:`mergekit_safety.methods.lox.ALPHA_RANGE` warns)."""
Rank = Annotated[int, Field(ge=0), _NUMBER]
"""LoX's ``k``, LSSF's ``max_rank``: a whole number ≥ 0 (0: all of it, no cap)."""
Eta = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False), _NUMBER]
"""LSSF's entropy share η, in (0, 1]."""
TopWeight = Annotated[float, Field(ge=1, allow_inf_nan=False), _NUMBER]
"""LSSF's ``top_weight`` a_1 ≥ 1: the leading direction's weight in the weighted projector."""
Budget = Annotated[float, Field(ge=0, allow_inf_nan=False), _NUMBER]
"""Safe Delta's budget s: finite, ≥ 0 (0 keeps no fine-tuned entry)."""


def domain_error(name: str, error: ValidationError, model: object | None = None) -> ConfigError:
    """One line for a value outside its domain: ``parameter 'NAME' of MODEL: MESSAGE (got X)``.

    The planner's line comes from ``mergekit_internals``' resolver wrapper, in this same form.
    """
    first = error.errors()[0]
    owner = f" of {model}" if model is not None else ""
    got = first.get("input")
    shown = f" (got {got!r})" if isinstance(got, (str, int, float)) else ""
    return ConfigError(f"parameter {name!r}{owner}: {first.get('msg', error)}{shown}")


def check_domains(specs: Sequence[ParameterSpec], parameters: Mapping[str, Any]) -> None:
    """Validate the Python API's values against their specs, with the planner's one line.

    mergekit's binding raises a bare pydantic ValidationError that names no parameter; this
    runs first. A per-model value is a mapping, a sequence or one value for all; a
    ``PerGroupValues`` holds one value per tensor group.
    """
    for spec in specs:
        if spec.name not in parameters:
            continue
        value = parameters[spec.name]
        shared = spec.scope == ParameterScope.SHARED
        for one in value.values if isinstance(value, PerGroupValues) else [value]:
            for model, raw in _per_model_values(one, shared=shared):
                try:
                    spec.validate(raw)
                except ValidationError as error:
                    found = find_config_error(error)
                    raise found or domain_error(spec.name, error, model) from None


def _per_model_values(value: Any, *, shared: bool) -> list[tuple[Any, Any]]:
    if shared:
        return [(None, value)]
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [(None, raw) for raw in value]
    return [(None, value)]


# --- what no single domain says -----------------------------------------------------------------


def check_parameters(
    method: str,
    shared: Mapping[str, Any],
    per_model: Mapping[Hashable, Mapping[str, Any]],
) -> None:
    """Refuse an unmeant extrapolation and warn once for a meant one or a large LoX α.

    The values have passed their domains (mergekit validated them while resolving or binding).
    """
    extrapolate = bool(shared.get("allow_extrapolation", False))
    scale = shared.get("scale")
    if scale is not None and scale < 0:
        if not extrapolate:
            raise ConfigError(
                f"{method}: scale (λ) is {scale:g}, below 0: that adds the harm direction instead "
                "of removing it; set `allow_extrapolation: true` if meant"
            )
        warn_once(
            (method, "scale", scale),
            f"mergekit-safety: {method}: scale {scale:g} adds the harm direction "
            "(allow_extrapolation: true)",
        )
    for model, values in per_model.items():
        weight = values.get("weight")
        if weight is None or values.get("role", Role.FINETUNED) is Role.UNALIGNED:
            continue  # safemerge's per-role default; the unaligned model's weight is unused
        if 0 <= weight <= 1:
            continue
        name = str(getattr(model, "model", model))
        if not extrapolate:
            raise ConfigError(
                f"{method}: weight of {name} is {weight:g}, outside [0, 1]: that extrapolates "
                "past the aligned or fine-tuned model; set `allow_extrapolation: true` if meant"
            )
        warn_once(
            (method, name, weight),
            f"mergekit-safety: {method}: weight {weight:g} of {name} extrapolates "
            "(allow_extrapolation: true)",
        )


def warn_once(key: tuple[str, str, float], message: str) -> None:
    """Warn once per merge (every tensor task checks the same values), or once per call."""
    run = runs.current()
    if run is None:
        warnings.warn(message, stacklevel=3)
    else:
        run.warn_once(key, message, stacklevel=3)
