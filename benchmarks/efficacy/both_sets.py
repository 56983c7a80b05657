"""Choosing on both harmful sets (issue 38 item 5): a point's validation numbers with the
third-party set's validation part beside them, and the gate that limits each set.

A sweep's point is measured on the validation split (AdvBench, look-alikes, task) by the study's
:class:`~mergekit_safety.evaluation.Evaluator`, then on the third-party set's validation part
(HarmBench); its summary gains ``engaged_<set>`` and ``broken_<set>``. :class:`PerSetGate` is the
library's :class:`~mergekit_safety.core.acceptance.Gate` with one more limit per extra key, so
the engine's choice (:func:`~mergekit_safety.tuning.choice.choose`) reads them as it reads the
others. Limits come from A's numbers on the same prompts and the config's ``choose`` margins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.efficacy.plan import Config, harmful_split
from mergekit_safety.core.acceptance import Gate, format_value


@dataclass(frozen=True)
class PerSetGate(Gate):
    """A :class:`Gate` with upper limits on more summary keys (e.g. engagement on HarmBench)."""

    extra: tuple[tuple[str, float], ...] = ()

    def limits(self) -> list[tuple[str, str, float]]:
        base = super().limits()
        return [*base[:-1], *((key, "<=", bound) for key, bound in self.extra), *base[-1:]]

    def describe(self) -> str:
        names = {"engaged_rate": "engaged (AdvBench)", "helpful_rate": "helpful on look-alikes",
                 "empty_rate": "broken (validation split)"}  # fmt: skip
        return " and ".join(
            f"{names.get(key, key)} {sign} {format_value(bound)}"
            for key, sign, bound in self.limits()
        )


def with_third_party(summary: Mapping[str, Any], third: Mapping[str, Any], name: str) -> dict:
    """``summary`` with the third-party set's engagement and broken share beside it."""
    return {
        **summary,
        f"engaged_{name}": third.get("engaged_rate"),
        f"broken_{name}": third.get("broken_rate"),
    }


def gate(config: Config, aligned: Mapping[str, Any], third: Mapping[str, Any]) -> PerSetGate:
    """Limits from A's validation summary and A's third-party validation summary."""
    spec = config.choose
    assert spec is not None
    name = third_party_name(config)
    return PerSetGate(
        max_engaged=round(aligned["engaged_rate"] + spec.engaged_above_aligned, 4),
        min_helpful=round(aligned["helpful_rate"] - spec.helpful_below_aligned, 4),
        max_broken=round(aligned["empty_rate"] + spec.broken_above_aligned, 4),
        extra=(
            (f"engaged_{name}", round(third["engaged_rate"] + spec.engaged_above_aligned, 4)),
            (f"broken_{name}", round(third["broken_rate"] + spec.broken_above_aligned, 4)),
        ),
    )


def third_party_name(config: Config) -> str:
    """The third-party set's name: the suffix of its keys (``engaged_harmbench``)."""
    return harmful_split(config)


@dataclass
class BothSets:
    """The sweep's evaluator on both harmful sets: ``inner`` on the validation split, then
    ``third`` (a path → the third-party summary) for the same model; ``known`` holds the
    references' third-party summaries by model path."""

    inner: Callable[[str], dict[str, Any]]
    third: Callable[[str], Mapping[str, Any]]
    name: str
    known: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def __call__(self, path: str) -> dict[str, Any]:
        summary = self.inner(path)
        key = str(Path(path).resolve())
        third = self.known.get(key)
        if third is None:
            third = self.third(path)
        return with_third_party(summary, third, self.name)

    @property
    def seconds(self) -> float:
        return float(getattr(self.inner, "seconds", 0.0))
