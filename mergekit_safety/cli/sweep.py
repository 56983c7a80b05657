"""``mergekit-safety sweep RECIPE --set weight=0.1:0.9:0.1 [--set threshold=...]``: choose a point
of a one- or two-parameter grid under a safety gate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mergekit_safety.acceptance import Gate
from mergekit_safety.cli.common import (
    NOTHING_PASSES,
    check_objective,
    check_outputs,
    check_ray,
    config_errors,
    gate_options,
    lm_eval_options,
    merge_options,
    merge_options_from,
    prompt_options,
    ray_options,
    terminate_unwinds,
)
from mergekit_safety.cli.methods_help import MethodsCommand
from mergekit_safety.evaluation.prompt_evaluator import Evaluator, make_evaluator


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
    type=click.Path(file_okay=False),
    help="Write the chosen merge here, with the reports and an updated model card. Needs a gate.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Allow a non-empty --out; model weights already there are replaced.",
)
@click.option(
    "--report",
    type=click.Path(file_okay=False),
    help="Where sweep.json/.csv/.md/.png go [default: --out, else ./sweep-<recipe name>].",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Where temporary merges live (room for two merges) [default: $TMPDIR].",
)
@prompt_options
@click.option(
    "--attacks",
    metavar="NAME[,NAME]",
    help="Also measure refusal under these jailbreaks at every point (as `eval --attacks`; the "
    "gate stays on the plain prompts).",
)
@click.option(
    "--attack-limit", type=click.IntRange(min=1), help="Wrap only the first N harmful prompts."
)
@click.option(
    "--backend",
    type=click.Choice(["transformers", "vllm"]),
    default="transformers",
    show_default=True,
    help="Generation backend, as for `mergekit-safety eval`; with --adapter, vllm serves every "
    "point's adapter as a LoRA request on one engine (needs vLLM installed).",
)
@merge_options
@click.option("--low-cpu-memory", is_flag=True, help="Keep merge results on the accelerator.")
@click.option(
    "--adapter",
    is_flag=True,
    help="Merge in adapter space (as `mergekit-safety adapter`): fine-tuned inputs written "
    "aligned+adapter, each value a peft LoRA adapter evaluated on the aligned model, loaded "
    "once for the whole sweep; --out the chosen adapter.",
)
@ray_options("Run the points as Ray tasks")
@lm_eval_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
def sweep_command(
    recipe: str,
    assignments: tuple[str, ...],
    gate: Gate,
    out: str | None,
    overwrite: bool,
    report: str | None,
    work_dir: str | None,
    harmful: str | None,
    benign: str | None,
    task: str | None,
    prompts_dir: str | None,
    limit: int | None,
    attacks: str | None,
    attack_limit: int | None,
    batch_size: int,
    max_new_tokens: int,
    device: str | None,
    dtype: str | None,
    judge: str | None,
    backend: str,
    cuda: bool,
    lazy_unpickle: bool,
    low_cpu_memory: bool,
    trust_remote_code: bool,
    random_seed: int | None,
    lora_merge_cache: str | None,
    adapter: bool,
    ray_address: str | None,
    ray_workers: int | None,
    lm_eval_tasks: str | None,
    lm_eval_include: str | None,
    lm_eval_chat_template: bool,
    lm_eval_limit: int | None,
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
    from mergekit_safety.card import describe_prompt_sets
    from mergekit_safety.sweep import parse_assignments, plan_grid

    try:
        grid = parse_assignments(assignments)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--set") from None
    gated = gate.active
    if out is not None and not gated:
        raise click.BadParameter(
            "needs a safety gate: --max-engaged (or --min-refusal) and/or --max-over-refusal",
            param_hint="--out",
        )
    out_path = None if out is None else Path(out)
    if out_path is not None and out_path.is_dir() and any(out_path.iterdir()) and not overwrite:
        raise click.BadParameter(
            f"{out} is not empty; choose a new directory or pass --overwrite", param_hint="--out"
        )
    report_dir = Path(report or out or f"sweep-{Path(recipe).stem}")
    if report_dir.exists() and not report_dir.is_dir():
        raise click.BadParameter(f"{report_dir} is not a directory", param_hint="--report")
    device = device or ("cuda" if cuda else "cpu")
    check_ray(ray_address, ray_workers)
    _check_backend(backend)
    from mergekit_safety.evaluation import harness

    tasks = harness.parse_tasks(lm_eval_tasks)
    check_objective(gate.objective, tasks)

    with config_errors():
        from mergekit_safety.planning import check_device

        check_device("cuda" if cuda else device)  # before minutes of reference evaluation
        check_outputs(out=out_path, report=report_dir)
        plan = plan_grid(recipe, grid)
        if adapter:  # every reason it has no adapter form, before any evaluation
            from mergekit_safety.adapter import plan_adapter

            plan_adapter(recipe)
        evaluate_model = _build_evaluator(
            harmful=harmful,
            benign=benign,
            task=task,
            prompts_dir=prompts_dir,
            limit=limit,
            judge=judge,
            batch_size=batch_size,
            **({"attacks": attacks, "attack_limit": attack_limit} if attacks else {}),
            max_new_tokens=max_new_tokens,
            device=device,
            dtype=dtype,
            progress=not quiet,
            backend=backend,
        )
        if tasks:
            harness.check_tasks(tasks, lm_eval_include)
            if isinstance(evaluate_model, Evaluator):
                evaluate_model.lm_eval = {
                    "tasks": tasks,
                    "include": lm_eval_include,
                    "chat_template": lm_eval_chat_template,
                    "limit": lm_eval_limit,
                }
        if ray_address and isinstance(evaluate_model, Evaluator):
            evaluate_model.progress = False  # the workers' bars would interleave; one bar here
        elif adapter and isinstance(evaluate_model, Evaluator):
            from mergekit_safety.evaluation.resident import ResidentBase, ResidentVllm

            evaluate_model.loader = (
                ResidentVllm(dtype=dtype)
                if backend == "vllm"
                else ResidentBase(device=device, dtype=dtype)
            )
    from mergekit_safety.sweep import SerialExecutor, run_sweep, write_reports

    options = merge_options_from(
        cuda=cuda,
        lazy_unpickle=lazy_unpickle,
        trust_remote_code=trust_remote_code,
        random_seed=random_seed,
        lora_merge_cache=lora_merge_cache,
        low_cpu_memory=low_cpu_memory,
    )
    where = {
        "work_dir": None if work_dir is None else Path(work_dir),
        "progress": not quiet,
        "adapter": adapter,
    }
    if ray_address:
        from mergekit_safety.sweep.distributed import RayExecutor

        gpus = 1 if cuda or device.startswith("cuda") else 0
        executor: Any = RayExecutor(options, **where, address=ray_address, workers=ray_workers,
                                    gpus_per_point=gpus)  # fmt: skip
    else:
        executor = SerialExecutor(options, **where)
    with config_errors(), terminate_unwinds():
        result = run_sweep(plan, evaluate_model, executor, gate=gate, out=out_path)
    for value, error in result.failed:
        click.echo(f"Point {plan.label(value)} failed and is left out: {error}", err=True)
    if getattr(evaluate_model, "loader", None) is not None:
        evaluate_model.loader.close()
    if hasattr(evaluate_model, "prompt_sets"):  # the real evaluator knows what it read
        prompt_sets = {**evaluate_model.prompt_sets(), "limit": limit}
    else:
        prompt_sets = describe_prompt_sets(harmful, benign, task, prompts_dir, limit)
    context = {
        "prompt_sets": prompt_sets,
        "judge": judge or result.aligned.get("judge"),  # the evaluator records its default
        "generation": {
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "device": device,
            "dtype": dtype,
        },
    }
    paths = write_reports(result, report_dir, context)
    click.echo(paths["md"].read_text(encoding="utf-8"))
    click.echo(f"Reports: {', '.join(str(p) for p in paths.values())}")
    if result.chosen is None:
        if gated:
            click.echo("No value passes the gate; no model written.", err=True)
            sys.exit(NOTHING_PASSES)
        return
    chosen = plan.label(result.chosen.value)
    if not gated:
        click.echo(f"Best task accuracy (no gate given): {chosen}")
    elif result.out is not None:
        _write_card(result, prompt_sets, judge)
        click.echo(f"Chosen {chosen}; merge written to {result.out}")
    else:
        click.echo(f"Chosen {chosen} (pass --out DIR to keep the merge)")


def _check_backend(backend: str) -> None:
    from mergekit_safety.evaluation import generation

    if backend == "vllm" and not generation.vllm_available():
        raise click.BadParameter("vllm is not installed (pip install vllm)", param_hint="--backend")


def _build_evaluator(**kwargs: Any):
    """Indirection so tests can swap in a fake evaluator."""
    try:
        return make_evaluator(**kwargs)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise click.ClickException(str(error)) from None


def _write_card(result: Any, prompt_sets: dict, judge: str | None) -> None:
    from mergekit_safety.acceptance import objective_label
    from mergekit_safety.card import SafetyEvaluation, update_card
    from mergekit_safety.sweep import SWEEPABLE, format_value

    plan = result.plan
    objective = objective_label(result.gate.objective)
    over = " × ".join(
        f"{name} ∈ {{{', '.join(format_value(v) for v in values)}}}"
        for name, values in zip(plan.parameters, plan.axes, strict=True)
    )
    sides = ", then ".join(
        f"the {'larger' if SWEEPABLE[name].toward_finetuned > 0 else 'smaller'} {name}"
        for name in plan.parameters
    )
    update_card(
        result.out,
        SafetyEvaluation(
            method=plan.method,
            merged=result.chosen.metrics,
            aligned=result.aligned,
            finetuned=result.finetuned,
            base_models=[plan.aligned, *plan.finetuned],
            gate=result.gate,
            prompt_sets=prompt_sets,
            judge=judge,
            note=f"`{plan.label(result.chosen.value)}` chosen by `mergekit-safety sweep` over "
            f"{over}: the best {objective} among the points that pass the gate (ties: {sides}, "
            "toward the fine-tune). Details: sweep.json, sweep.png"
            + (", sweep-heatmap.png." if plan.grid else "."),
        ),
    )
