"""The domains of the methods' parameters, checked while mergekit plans (before a tensor loads).

A value outside its domain is a merge the user did not mean, and for a safety tool the worst
outcome is a silent one: ``threshold: -1`` returns the unsafe fine-tune bit for bit, ``weight: 5``
gives θ_a + 5Δ. So: τ lies in [0, 1] (ρ is the cosine of an update and its projection onto a PSD
subspace, never negative); weights are finite and in [0, 1] unless the recipe says
``allow_extrapolation: true`` (then a warning); ``density`` lies in (0, 1].
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

from mergekit_safety import runs
from mergekit_safety.errors import ConfigError
from mergekit_safety.roles import Role

DEFAULT_THRESHOLD = 0.35
"""τ of every gated method (Safe LoRA's and SafeMERGE's papers' range; see the README)."""


def check_parameters(
    method: str,
    shared: Mapping[str, Any],
    per_model: Mapping[Hashable, Mapping[str, Any]],
) -> None:
    """Raise ConfigError for a parameter outside its domain; warn once for allowed extrapolation."""
    threshold = shared.get("threshold")
    if threshold is not None and not (_finite(threshold) and 0 <= threshold <= 1):
        raise ConfigError(
            f"{method}: threshold (τ) must lie in [0, 1], as ρ does; got {threshold!r}"
        )
    density = shared.get("density")
    if density is not None and not (_finite(density) and 0 < density <= 1):
        raise ConfigError(f"{method}: density must lie in (0, 1]; got {density!r}")
    _check_lox_and_harm_removal(method, shared)
    extrapolate = bool(shared.get("allow_extrapolation", False))
    for model, values in per_model.items():
        weight = values.get("weight")
        if weight is None or values.get("role", Role.FINETUNED) is Role.UNALIGNED:
            continue  # safemerge's per-role default; the unaligned model's weight is unused
        name = str(getattr(model, "model", model))
        if not _finite(weight):
            raise ConfigError(f"{method}: weight of {name} must be a finite number; got {weight!r}")
        if 0 <= weight <= 1:
            continue
        if not extrapolate:
            raise ConfigError(
                f"{method}: weight of {name} is {weight:g}, outside [0, 1]: that extrapolates "
                "past the aligned or fine-tuned model; set `allow_extrapolation: true` if meant"
            )
        _warn_once(
            (method, name, weight),
            f"mergekit-safety: {method}: weight {weight:g} of {name} extrapolates "
            "(allow_extrapolation: true)",
        )


LOX_ALPHA_RANGE = 2.0
"""α past this warns: twice the reference code's default ``--coef 1`` (VITA-Group/LoX
``safety/LoX.py`` line 11); larger extrapolations leave the region the method was tried in."""


def _check_lox_and_harm_removal(method: str, shared: Mapping[str, Any]) -> None:
    """LoX: ``k`` whole ≥ 0, ``alpha`` finite ≥ 0; harm removal: ``scale`` (λ) finite."""
    k = shared.get("k")
    if k is not None and not (_finite(k) and float(k).is_integer() and k >= 0):
        raise ConfigError(f"{method}: k must be a whole number >= 0 (0: all of it); got {k!r}")
    alpha = shared.get("alpha")
    if alpha is not None:
        if not (_finite(alpha) and alpha >= 0):
            raise ConfigError(f"{method}: alpha must be a finite number >= 0; got {alpha!r}")
        if alpha > LOX_ALPHA_RANGE:
            _warn_once(
                (method, "alpha", alpha),
                f"mergekit-safety: {method}: alpha {alpha:g} is past {LOX_ALPHA_RANGE:g}, beyond "
                "the extrapolations LoX was run with; check the model still answers",
            )
    scale = shared.get("scale")
    if scale is not None and not _finite(scale):
        raise ConfigError(f"{method}: scale (λ) must be a finite number; got {scale!r}")
    if scale is not None and scale < 0:
        if not shared.get("allow_extrapolation", False):
            raise ConfigError(
                f"{method}: scale (λ) is {scale:g}, below 0: that adds the harm direction instead "
                "of removing it; set `allow_extrapolation: true` if meant"
            )
        _warn_once(
            (method, "scale", scale),
            f"mergekit-safety: {method}: scale {scale:g} adds the harm direction "
            "(allow_extrapolation: true)",
        )


def check_rank(method: str, k: Any, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """LoX's ``k`` (directions kept) is at most the smaller side of every matrix it changes."""
    if not _finite(k) or k <= 0:
        return
    for name, shape in shapes.items():
        if len(shape) == 2 and k > min(shape):
            raise ConfigError(
                f"{method}: k = {k:g} is more than {name} has ({shape[0]}×{shape[1]}: at most "
                f"{min(shape)}); use k <= {min(shape)}, or 0 for the whole update"
            )


def _warn_once(key: tuple[str, str, float], message: str) -> None:
    """Warn once per merge (every tensor task checks the same values), or once per call."""
    run = runs.current()
    if run is None:
        warnings.warn(message, stacklevel=3)
    else:
        run.warn_once(key, message, stacklevel=3)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
