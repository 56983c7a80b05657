"""``mergekit-safety search RECIPE --param weight=0:1@4/self_attn,mlp --min-refusal 0.9 --out DIR``:
choose merge coefficients — global or per layer and module — under the safety gate, with Optuna."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click

from mergekit_safety.cli.common import NOTHING_PASSES, config_errors, terminate_unwinds
from mergekit_safety.cli.options import (
    RaySettings,
    budget_options,
    evaluation_options,
    gate_options,
    merge_options,
    needs_gate,
    ray_options,
)
from mergekit_safety.cli.sweep_search import check_before_work, report_context, write_card
from mergekit_safety.core.acceptance import Gate
from mergekit_safety.evaluation.settings import EvalSettings


@click.command("search")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option(
    "--space",
    "space_file",
    type=click.Path(dir_okay=False),
    help="A space YAML: NAME: {low, high[, step|log][, anchors, filters, rest]} "
    "per recipe parameter.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=LOW:HIGH[:STEP|:log][@N[/FILTER,...]]",
    help="A parameter and its range, e.g. weight=0:1 (one value) or weight=0:1@4/self_attn,mlp "
    "(4 values over depth for attention and for MLP tensors). Repeatable; with --space too.",
)
@gate_options
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="The chosen model, recipe.yml, its card, search.json/.md and the plots.",
)
@click.option("--overwrite", is_flag=True, help="Allow a non-empty --out.")
@budget_options
@click.option(
    "--test-prompts",
    type=click.Path(file_okay=False, exists=True),
    help="A directory of test prompt sets, disjoint from the validation ones: the "
    "chosen model is evaluated there too and reported beside validation.",
)
@evaluation_options(device_help="Evaluation device [default: cuda with --cuda, else cpu].",
                    auto_device=False)  # fmt: skip
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Where the chosen merge and LoRA-merged inputs live [default: $TMPDIR].",
)
@merge_options
@ray_options("Evaluate each batch's trials on Ray actors, one resident model each")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def search_command(
    recipe: str,
    space_file: str | None,
    params: tuple[str, ...],
    gate: Gate,
    out: str,
    overwrite: bool,
    budget: Any,
    test_prompts: str | None,
    evaluation: EvalSettings,
    work_dir: str | None,
    merging: Any,
    ray: RaySettings | None,
    quiet: bool,
):
    """Search RECIPE's parameters (--space, --param) for the best task accuracy under the gate.

    Each trial merges in memory, through mergekit's own planner, into a model loaded once, and
    is evaluated on the validation prompts; Optuna's constrained TPE (seeded) proposes the next.
    A trial that can no longer pass the gate stops evaluating (--stop-failing; the same choice).
    The chosen trial (``sweep``'s rule) is written as a plain mergekit recipe (OUT/recipe.yml,
    per-layer values as mergekit's gradient lists and filters) and merged by mergekit's
    run_merge into OUT, as mergekit-yaml would. Exit status 3: no trial passes the gate.
    """
    from mergekit_safety.tuning import study as studies

    needs_gate(gate, "--max-engaged", "search chooses under a safety gate")
    out_path = Path(out)
    evaluation = evaluation.replace(progress=False)  # one bar for the search, not one per model
    check_before_work(gate, evaluation, merging, out=out_path, overwrite=overwrite,
                      storage=budget.storage)  # fmt: skip
    with config_errors():
        studies.import_optuna()  # the missing extra: one line, before any work
        from mergekit_safety.tuning.space import check_space, load_space, parse_param

        dimensions = [
            *(load_space(space_file) if space_file else []),
            *(parse_param(text) for text in params),
        ]
        space, sweep_plan = check_space(dimensions, recipe)
        evaluator, tester = _evaluators(evaluation, test_prompts)
        plan = studies.SearchPlan(space, sweep_plan)
        if not budget.study_name:
            budget = dataclasses.replace(budget, study_name=f"search-{Path(recipe).stem}")
        study = studies.open_study(plan, budget, gate, _measured(evaluator, evaluation))
    from mergekit_safety.tuning.optuna_sampler import run_search

    runner = _runner(merging, work_dir, evaluation, ray, budget.parallel)
    with config_errors(), terminate_unwinds():
        result = run_search(study, plan, budget, gate, evaluator, tester, runner, out_path,
                            progress=not quiet)  # fmt: skip
    _report(result, evaluator, tester, evaluation, out_path)


def _report(result: Any, evaluator: Any, tester: Any, evaluation: EvalSettings, out: Path) -> None:
    from mergekit_safety.core.acceptance import objective_label
    from mergekit_safety.tuning.search_report import write_reports

    context = report_context(evaluator, evaluation, result.aligned)
    if tester is not None:
        context["test_prompt_sets"] = {**tester.prompt_sets(), "limit": evaluation.prompts.limit}
    else:
        context["test_prompt_sets"] = None
    paths = write_reports(result, out, context)
    click.echo(paths["md"].read_text(encoding="utf-8"))
    click.echo(f"Reports: {', '.join(str(p) for p in paths.values())}")
    if result.chosen is None:
        click.echo("No trial passes the gate; no model written.", err=True)
        sys.exit(NOTHING_PASSES)
    plan = result.plan
    space = "; ".join(d.describe() for d in plan.space.dimensions)
    note = (
        f"Trial {result.chosen.number} of {len(result.counted)}, chosen by "
        f"`mergekit-safety search` over {space}: the best "
        f"{objective_label(result.gate.objective)} among the trials that pass the gate, on "
        "the validation prompts above (a choice fitted to them; see search.md for test "
        "numbers when given). Recipe: recipe.yml; details: search.json, search.png."
    )
    write_card(out, result, plan.sweep.method, [plan.sweep.aligned, *plan.sweep.finetuned],
               context, note)  # fmt: skip
    click.echo(
        f"Chosen trial {result.chosen.number}; merge written to {out}, recipe {out}/recipe.yml"
    )


def _runner(merging: Any, work_dir: str | None, evaluation: EvalSettings,
            ray: RaySettings | None, parallel: int) -> Any:  # fmt: skip
    """Each trial merged in memory into a resident model: here, or on ``parallel`` Ray actors."""
    from mergekit_safety.tuning.runners import InMemory, RayRunner, SerialRunner

    how = InMemory(evaluation.device, evaluation.dtype)
    if ray is None:
        return SerialRunner(merging, how, work_dir)
    gpus = 1 if evaluation.device.startswith("cuda") else 0
    return RayRunner(merging, how, work_dir, ray.address, ray.workers, gpus, actors=parallel)


def _evaluators(evaluation: EvalSettings, test_prompts: str | None) -> tuple[Any, Any]:
    """The validation evaluator, and the test one on ``--test-prompts`` (disjoint) if given."""
    from mergekit_safety.evaluation.settings import PromptSources

    if evaluation.backend == "vllm" and evaluation.tasks:
        raise click.BadParameter("lm-eval tasks run on the trial's network in memory: not "
                                 "with vllm", param_hint="--backend")  # fmt: skip
    evaluator = evaluation.build()
    if test_prompts is None:
        return evaluator, None
    sources = PromptSources(prompts_dir=test_prompts, limit=evaluation.prompts.limit)
    tester = evaluation.replace(prompts=sources).build()
    _check_disjoint(evaluator.prompts, tester.prompts, evaluation.prompts, test_prompts)
    return evaluator, tester


def _measured(evaluator: Any, evaluation: EvalSettings) -> dict[str, Any]:
    """How trials are measured: part of what makes a stored study this search."""
    return {
        "prompt_sets": evaluator.prompt_sets(),
        "judge": evaluation.judge,
        "max_new_tokens": evaluation.max_new_tokens,
        "dtype": evaluation.dtype,
        "lm_eval": evaluator.lm_eval,
    }


def _check_disjoint(validation: Any, test: Any, sources: Any, test_dir: str) -> None:
    """Validation and test share no prompt, in any set."""
    from mergekit_safety.core.errors import ConfigError

    given = sources.prompts_dir or "built-in"
    seen = {*validation.harmful, *validation.benign, *(item.prompt for item in validation.task)}
    for prompt in [*test.harmful, *test.benign, *(item.prompt for item in test.task)]:
        if prompt in seen:
            raise ConfigError(
                f"--test-prompts {test_dir} shares a prompt with the validation prompts "
                f"({given}): {prompt[:60]!r}; keep them disjoint"
            )
