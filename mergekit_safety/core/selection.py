"""Selection by rank: merge the K (or the fraction F of) gateable matrices with the lowest ρ.

A fixed τ transfers badly between models: ρ's spread depends on the model, the LoRA rank and the
task. ``top_k: K`` / ``fraction: F`` (global recipe parameters of every gated method) say instead
how many matrices to merge. mergekit runs a method one tensor at a time, so every ρ is needed
before the first merge: :mod:`mergekit_safety.recipe.planning` scores the recipe in a first lazy
pass and turns the selection into an explicit τ here; the ordinary ``ρ < τ`` (``ρ ≤ τ``) merge
follows.

**Which matrices count.** The gateable ones (2-D, no vocabulary axis) with a defined ρ: a matrix
with ρ undefined (V = 0 or Δ = 0) keeps its fine-tuned weights at every τ, so it is never ranked.

**Ranking and ties.** Candidates are ordered by ρ, then by tensor name. τ must pick exactly the
first K under a plain comparison, so when the K-th and (K+1)-th lowest ρ are *equal* no τ can
split them: that is an error naming the two matrices and the nearest K that work, never a silent
K ± n.

**τ.** Strictly between the K-th and (K+1)-th lowest ρ (above the highest for K = all), so strict
``<`` and inclusive ``≤`` methods select the same matrices: the shortest decimal in the middle
half of that gap (``0.41`` rather than ``0.41372…``), readable in a written recipe and robust to
the last digit of ρ.

**fraction → K.** K = ⌈F · N⌉ (N candidates): at least the fraction asked for, and at least one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergekit_safety.core.errors import ConfigError

SELECTORS = ("top_k", "fraction")
"""The recipe parameters that select by rank; at most one of them, and never with ``threshold``."""
GATE_KEYS = ("threshold", *SELECTORS)
"""Alternative ways to say which matrices merge: a recipe sets at most one of them."""


def set_gate(parameters: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``parameters`` with ``key`` (one of :data:`GATE_KEYS`) set and the other two removed."""
    assert key in GATE_KEYS, key
    return {**{k: v for k, v in parameters.items() if k not in GATE_KEYS}, key: value}


def unranked(method: str) -> ConfigError:
    """The error for a selection in a recipe without an unaligned model (nothing gives ρ)."""
    return ConfigError(
        f"top_k and fraction rank matrices by rho, which needs a model with role "
        f"'unaligned' ({method} without one is ungated)"
    )


def with_threshold(parameters: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """A selection turned into τ: ``threshold: τ`` in place of ``top_k``/``fraction``."""
    return set_gate(parameters, "threshold", threshold)


def drop_selection(parameters: Mapping[str, Any], *, drop_threshold: bool) -> dict[str, Any]:
    """``parameters`` without ``top_k``/``fraction`` (and ``threshold``)."""
    dropped = GATE_KEYS if drop_threshold else SELECTORS
    return {k: v for k, v in parameters.items() if k not in dropped}


@dataclass(frozen=True)
class Selection:
    """``top_k: K`` or ``fraction: F``, validated."""

    top_k: int | None = None
    fraction: float | None = None

    def count(self, available: int) -> int:
        """How many matrices to merge out of ``available`` candidates."""
        if self.top_k is not None:
            return self.top_k
        assert self.fraction is not None
        return max(1, math.ceil(round(self.fraction * available, 9)))

    def label(self) -> str:
        return f"top_k={self.top_k}" if self.top_k is not None else f"fraction={self.fraction:g}"


def parse_selection(
    top_k: Any = None, fraction: Any = None, *, threshold_set: bool = False
) -> Selection | None:
    """The selection a recipe asks for, or None; every mistake is a one-line ConfigError."""
    if top_k is None and fraction is None:
        return None
    if top_k is not None and fraction is not None:
        raise ConfigError("give top_k or fraction, not both")
    if threshold_set:
        which = "top_k" if top_k is not None else "fraction"
        raise ConfigError(
            f"{which} chooses the threshold itself; remove `threshold` from the recipe "
            "(or remove top_k/fraction to use a fixed threshold)"
        )
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int | float) or top_k != int(top_k):
            raise ConfigError(f"top_k must be a whole number of matrices; got {top_k!r}")
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1; got {int(top_k)}")
        return Selection(top_k=int(top_k))
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ConfigError(f"fraction must be a number in (0, 1]; got {fraction!r}")
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must lie in (0, 1]; got {fraction:g}")
    return Selection(fraction=float(fraction))


@dataclass(frozen=True)
class Resolved:
    """A selection turned into τ: what ``top_k``/``fraction`` means for this recipe."""

    selection: Selection
    threshold: float
    chosen: tuple[tuple[str, float], ...]
    """(tensor, ρ) of the merged matrices, lowest ρ first."""
    available: int
    """How many matrices were ranked (gateable, ρ defined)."""
    next_rho: float | None
    """The lowest ρ not chosen: τ lies strictly between it and the last chosen one."""

    def summary(self) -> str:
        return (
            f"{self.selection.label()}: threshold {self.threshold:g} merges "
            f"{len(self.chosen)} of {self.available} ranked matrices"
        )


def resolve(selection: Selection, scores: Mapping[str, float | None]) -> Resolved:
    """Turn a selection into the τ that merges exactly the chosen matrices.

    ``scores``: tensor name → ρ for every gateable matrix (None or NaN: undefined, not ranked).
    """
    ranked = sorted(
        (float(rho), name) for name, rho in scores.items() if rho is not None and rho == rho
    )
    available = len(ranked)
    if available == 0:
        raise ConfigError(
            f"{selection.label()}: no matrix has a defined rho (every update or alignment "
            "difference is zero), so there is nothing to rank"
        )
    k = selection.count(available)
    if k > available:
        raise ConfigError(
            f"top_k={k} but only {available} matrices can be ranked (gateable 2-D weights with a "
            f"defined rho); use top_k <= {available} or fraction"
        )
    below = ranked[k - 1][0]
    above = ranked[k][0] if k < available else None
    if above is not None and above == below:
        raise ConfigError(_tie_message(selection, ranked, k))
    threshold = cut_threshold(below, above)
    chosen = tuple((name, rho) for rho, name in ranked[:k])
    return Resolved(selection, threshold, chosen, available, above)


def _tie_message(selection: Selection, ranked: Sequence[tuple[float, str]], k: int) -> str:
    rho = ranked[k - 1][0]
    fewer = sum(r < rho for r, _ in ranked)
    more = sum(r <= rho for r, _ in ranked)
    options = " or ".join(f"top_k={n}" for n in (fewer, more) if n >= 1)
    return (
        f"{selection.label()} cuts between matrices with equal rho {rho:.6g} "
        f"({ranked[k - 1][1]}, {ranked[k][1]}): no threshold merges exactly {k}; use {options}"
    )


def cut_threshold(below: float, above: float | None) -> float:
    """A τ with ``below < τ < above``: the shortest decimal in the middle half of the gap.

    ``above`` None (every candidate chosen): τ lies between ``below`` and 1 (ρ ≤ 1), or just
    above ``below`` if that is 1 already.
    """
    if above is None:
        above = 1.0 if below < 1.0 else below + 1e-6
    gap = above - below
    low, high, middle = below + gap / 4, above - gap / 4, below + gap / 2
    for digits in range(1, 18):
        candidate = round(middle, digits)
        if low <= candidate <= high and below < candidate < above:
            return candidate
    if below < middle < above:
        return middle
    raise ConfigError(f"rho {below!r} and {above!r} are too close to put a threshold between")
