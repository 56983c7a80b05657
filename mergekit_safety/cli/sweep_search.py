"""What ``sweep`` and ``search`` do alike around their loop: the checks before any model is
evaluated, what the reports record of the evaluation, and the chosen merge's card."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from mergekit_safety.cli.common import check_outputs, config_errors
from mergekit_safety.cli.options import check_objective
from mergekit_safety.core.acceptance import Gate
from mergekit_safety.evaluation.settings import EvalSettings


def check_before_work(
    gate: Gate,
    evaluation: EvalSettings,
    merging: Any,
    *,
    out: Path | None,
    overwrite: bool,
    report: Path | None = None,
    storage: str | None = None,
) -> None:
    """The objective, the devices and every output, before minutes of reference evaluation:
    a non-empty ``out`` needs ``overwrite``."""
    check_objective(gate.objective, evaluation.tasks)
    if out is not None and out.is_dir() and any(out.iterdir()) and not overwrite:
        raise click.BadParameter(
            f"{out} is not empty; choose a new directory or pass --overwrite", param_hint="--out"
        )
    with config_errors():
        from mergekit_safety.recipe.planning import check_device

        check_device("cuda" if merging.cuda else evaluation.device)
        check_outputs(out=out, report=report, storage=storage)


def report_context(evaluator: Any, evaluation: EvalSettings, judged: Mapping[str, Any]) -> dict:
    """How the models were measured, for the reports and the card: the prompt sets (as the
    evaluator read them), the judge (else as ``judged``, a summary, names it) and generation."""
    from mergekit_safety.publish.model_card import describe_prompt_sets

    limit = evaluation.prompts.limit
    if hasattr(evaluator, "prompt_sets"):
        prompt_sets = {**evaluator.prompt_sets(), "limit": limit}
    else:  # a stand-in evaluator (tests)
        sources = evaluation.prompts
        prompt_sets = describe_prompt_sets(sources.harmful, sources.benign, sources.task,
                                           sources.prompts_dir, limit)  # fmt: skip
    return {
        "prompt_sets": prompt_sets,
        "judge": evaluation.judge or judged.get("judge"),
        "generation": evaluation.generation(),
    }


def write_card(
    out: Path,
    result: Any,
    method: str,
    base_models: Sequence[str],
    context: Mapping[str, Any],
    note: str,
) -> None:
    """The chosen merge's model card: its row, the references', the gate and ``note`` (how it
    was chosen); ``result`` holds ``chosen.metrics``, ``aligned``, ``finetuned`` and ``gate``."""
    from mergekit_safety.publish.model_card import SafetyEvaluation, update_card

    update_card(
        out,
        SafetyEvaluation(
            method=method,
            merged=result.chosen.metrics,
            aligned=result.aligned,
            finetuned=result.finetuned,
            base_models=list(base_models),
            gate=result.gate,
            prompt_sets=context["prompt_sets"],
            judge=context["judge"],
            note=note,
        ),
    )
