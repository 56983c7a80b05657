"""``mergekit-safety sweep RECIPE --set weight=0.1:0.9:0.1 [--set threshold=...]``: choose a point
of a one- or two-parameter grid under a safety gate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mergekit_safety.cli.common import NOTHING_PASSES, config_errors, terminate_unwinds
from mergekit_safety.cli.methods_help import MethodsCommand
from mergekit_safety.cli.options import (
    RaySettings,
    evaluation_options,
    gate_options,
    merge_options,
    needs_gate,
    ray_options,
)
from mergekit_safety.cli.sweep_search import check_before_work, report_context, write_card
from mergekit_safety.core.acceptance import Gate
from mergekit_safety.evaluation.settings import EvalSettings


@click.command("sweep", cls=MethodsCommand, methods="all")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "assignments",
    required=True,
    multiple=True,
    metavar="NAME=VALUES",
    help="A parameter and its values: weight=0.1:0.9:0.1 (START:STOP:STEP, STOP included) "
    "or threshold=0.2,0.3,0.4; also top_k=4,8,12 or fraction=0.1,0.25. Give it twice for a "
    "grid (at most two parameters; threshold, top_k and fraction are alternatives). weight is "
    "set on the fine-tuned models, the others globally.",
)
@gate_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the chosen merge here, with the reports and an updated model card. Needs a gate.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Allow a non-empty --out; model weights already there are replaced.",
)
@click.option(
    "--report",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where sweep.json/.csv/.md/.png go [default: --out, else ./sweep-<recipe name>].",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Where temporary merges live (room for two merges) [default: $TMPDIR].",
)
@evaluation_options(device_help="Evaluation device [default: cuda with --cuda, else cpu].",
                    auto_device=False)  # fmt: skip
@merge_options
@click.option(
    "--adapter",
    is_flag=True,
    help="Merge in adapter space (as `mergekit-safety adapter`): fine-tuned inputs written "
    "aligned+adapter, each value a peft LoRA adapter evaluated on the aligned model, loaded "
    "once for the whole sweep (on one vLLM engine with --backend vllm); --out the chosen adapter.",
)
@ray_options("Run the points as Ray tasks")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def sweep_command(
    recipe: str,
    assignments: tuple[str, ...],
    gate: Gate,
    out: Path | None,
    overwrite: bool,
    report: Path | None,
    work_dir: Path | None,
    evaluation: EvalSettings,
    merging: Any,
    adapter: bool,
    ray: RaySettings | None,
    quiet: bool,
):
    """Merge RECIPE once per point of a one- or two-parameter grid, evaluate, and choose a point.

    The aligned (base_model) and fine-tuned models are evaluated once, for reference. The chosen
    point has the best task accuracy among those passing the gate (--max-engaged or
    --min-refusal, with --min-helpful and --max-broken; --max-over-refusal); ties go to the
    fine-tuned side, parameter by parameter in --set order:
    the larger weight, the smaller threshold, top_k or fraction. Merges live in a temporary
    directory that is removed however the run ends. Exit status 3: no point passes the gate.
    """
    from mergekit_safety.tuning.grid import parse_assignments, plan_grid
    from mergekit_safety.tuning.grid_sampler import run_sweep
    from mergekit_safety.tuning.sweep_report import write_reports

    try:
        grid = parse_assignments(assignments)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--set") from None
    if out is not None:
        needs_gate(gate, "--out")
    report_dir = report or out or Path(f"sweep-{Path(recipe).stem}")
    if report_dir.exists() and not report_dir.is_dir():
        raise click.BadParameter(f"{report_dir} is not a directory", param_hint="--report")
    check_before_work(gate, evaluation, merging, out=out, overwrite=overwrite, report=report_dir)
    with config_errors():
        plan = plan_grid(recipe, grid)
        if adapter:  # every reason it has no adapter form, before any evaluation
            from mergekit_safety.adapter import plan_adapter

            plan_adapter(recipe)
        evaluator = _evaluator(evaluation, adapter=adapter, ray=ray)
    runner = _runner(merging, work_dir, adapter=adapter, ray=ray, device=evaluation.device)
    try:
        with config_errors(), terminate_unwinds():
            result = run_sweep(plan, evaluator, runner, gate=gate, out=out, progress=not quiet)
    finally:
        if getattr(evaluator, "loader", None) is not None:
            evaluator.loader.close()
    for value, error in result.failed:
        click.echo(f"Point {plan.label(value)} failed and is left out: {error}", err=True)
    context = report_context(evaluator, evaluation, result.aligned)
    paths = write_reports(result, report_dir, context)
    click.echo(paths["md"].read_text(encoding="utf-8"))
    click.echo(f"Reports: {', '.join(str(p) for p in paths.values())}")
    _announce(result, context)


def _evaluator(evaluation: EvalSettings, *, adapter: bool, ray: RaySettings | None) -> Any:
    """One bar for a Ray sweep (the workers' would interleave); an adapter sweep's aligned
    model resident for every point."""
    if ray is not None:
        return evaluation.replace(progress=False).build()
    if not adapter:
        return evaluation.build()
    from mergekit_safety.evaluation.resident_models import ResidentBase, ResidentVllm

    if evaluation.backend == "vllm":
        return evaluation.build(loader=ResidentVllm(dtype=evaluation.dtype))
    return evaluation.build(loader=ResidentBase(device=evaluation.device, dtype=evaluation.dtype))


def _runner(merging: Any, work_dir: Path | None, *, adapter: bool, ray: RaySettings | None,
            device: str) -> Any:  # fmt: skip
    """Where the points run: here, one after another, or as Ray tasks; each merged to disk."""
    from mergekit_safety.tuning.runners import OnDisk, RayRunner, SerialRunner

    how = OnDisk(adapter=adapter)
    if ray is None:
        return SerialRunner(merging, how, work_dir)
    gpus = 1 if merging.cuda or device.startswith("cuda") else 0
    return RayRunner(merging, how, work_dir, ray.address, ray.workers, gpus)


def _announce(result: Any, context: dict[str, Any]) -> None:
    """The choice, its card, or exit status 3 when a gate was given and nothing passes it."""
    plan = result.plan
    if result.chosen is None:
        if result.gate.active:
            click.echo("No value passes the gate; no model written.", err=True)
            sys.exit(NOTHING_PASSES)
        return
    chosen = plan.label(result.chosen.value)
    if not result.gate.active:
        click.echo(f"Best task accuracy (no gate given): {chosen}")
    elif result.out is not None:
        write_card(result.out, result, plan.method, [plan.aligned, *plan.finetuned], context,
                   _card_note(result))  # fmt: skip
        click.echo(f"Chosen {chosen}; merge written to {result.out}")
    else:
        click.echo(f"Chosen {chosen} (pass --out DIR to keep the merge)")


def _card_note(result: Any) -> str:
    """How the sweep chose: the grid, the rule and its ties."""
    from mergekit_safety.core.acceptance import format_value, objective_label
    from mergekit_safety.tuning.grid import SWEEPABLE

    plan = result.plan
    over = " × ".join(
        f"{name} ∈ {{{', '.join(format_value(v) for v in values)}}}"
        for name, values in zip(plan.parameters, plan.axes, strict=True)
    )
    sides = ", then ".join(
        f"the {'larger' if SWEEPABLE[name].toward_finetuned > 0 else 'smaller'} {name}"
        for name in plan.parameters
    )
    return (
        f"`{plan.label(result.chosen.value)}` chosen by `mergekit-safety sweep` over {over}: the "
        f"best {objective_label(result.gate.objective)} among the points that pass the gate "
        f"(ties: {sides}, toward the fine-tune). Details: sweep.json, sweep.png"
        + (", sweep-heatmap.png." if plan.grid else ".")
    )
