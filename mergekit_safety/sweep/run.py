"""The sweep's run: merge each point with mergekit's ``run_merge``, evaluate it, keep the choice.

Everything a run writes lives in one temporary directory, removed also on Ctrl-C; only the best
passing merge so far survives there.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergekit_safety.gate import OBJECTIVE, metric, passes, within_noise
from mergekit_safety.lora_cache import lora_cache
from mergekit_safety.sweep.grid import SWEEPABLE, SweepPlan, Value

Evaluator = Callable[[str], Mapping[str, Any]]
"""Evaluates the model at a path; returns ``EvalResult.summary()``'s dict."""


def evaluable(name: str, merge_options: Any) -> str:
    """The directory to evaluate for a reference: itself, or its LoRA merged, with a tokenizer."""
    from mergekit.common import ModelReference

    from mergekit_safety.lora_cache import merged_copy

    return merged_copy(
        ModelReference.parse(name),
        merge_options.lora_merge_cache,
        trust_remote_code=merge_options.trust_remote_code,
    )


@dataclass(frozen=True)
class SweepPoint:
    """One swept value (a tuple for a grid, in --set order) and its evaluation summary."""

    value: Value
    metrics: Mapping[str, Any]

    @property
    def values(self) -> tuple[float, ...]:
        return self.value if isinstance(self.value, tuple) else (self.value,)


def select(
    points: Sequence[SweepPoint],
    min_refusal: float | None,
    max_over_refusal: float | None,
    parameter: str | Sequence[str],
    objective: str = OBJECTIVE,
) -> SweepPoint | None:
    """The passing point with the best ``objective`` (task accuracy, or an ``lm_eval:TASK:METRIC``
    that is higher-is-better), or None if none passes.

    A missing value ranks below any number. Ties go to the fine-tuned side, parameter by
    parameter in the order given (see ``TIE_BREAK``).
    """
    names = [parameter] if isinstance(parameter, str) else list(parameter)
    directions = [SWEEPABLE[name].toward_finetuned for name in names]
    passing = [p for p in points if passes(p.metrics, min_refusal, max_over_refusal)]
    if not passing:
        return None

    def rank(point: SweepPoint) -> tuple[float, ...]:
        accuracy = metric(point.metrics, objective)
        sides = (d * v for d, v in zip(directions, point.values, strict=True))
        return (-math.inf if accuracy is None else accuracy, *sides)

    return max(passing, key=rank)


def close_to_chosen(
    points: Sequence[SweepPoint],
    chosen: SweepPoint | None,
    min_refusal: float | None,
    max_over_refusal: float | None,
    objective: str = OBJECTIVE,
) -> list[SweepPoint]:
    """The other passing points whose ``objective`` is within noise of the choice's.

    Within noise: their 95 % Wilson intervals overlap. Such a choice is one of several the data
    cannot rank; a larger task set, not the sweep, would separate them.
    """
    if chosen is None:
        return []
    return [
        point
        for point in points
        if point is not chosen
        and passes(point.metrics, min_refusal, max_over_refusal)
        and within_noise(point.metrics, chosen.metrics, objective)
    ]


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
    objective: str = OBJECTIVE
    """What the choice maximizes among the passing points."""
    failed: list[tuple[Value, str]] = field(default_factory=list)
    """Points whose merge or evaluation failed (a distributed run goes on without them)."""

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
        for value, error in self.failed:
            rows.append(
                {
                    "kind": "failed",
                    "value": list(value) if isinstance(value, tuple) else value,
                    **self.plan.as_dict(value),
                    "model": self.plan.label(value),
                    "error": error,
                    "passes": False,
                    "chosen": False,
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
    objective: str = OBJECTIVE,
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
            objective=objective,
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
            best = select(result.points, min_refusal, max_over_refusal, plan.parameters, objective)
            if out is not None and best is point:
                if kept is not None:
                    shutil.rmtree(kept.parent)
                kept = where
            else:
                shutil.rmtree(where.parent)
        result.chosen = select(
            result.points, min_refusal, max_over_refusal, plan.parameters, objective
        )
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
