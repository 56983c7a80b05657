"""``mergekit-safety search RECIPE --param weight=0:1@4/self_attn,mlp --min-refusal 0.9 --out DIR``:
choose merge coefficients — global or per layer and module — under the safety gate, with Optuna."""

from __future__ import annotations

import sys
import time
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
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="The trial budget in all: a rerun on the same --storage continues to it.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Trials asked and evaluated at a time (Ray actors with --ray).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="The sampler's seed.")
@click.option(
    "--startup-trials",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Random trials before TPE models the results.",
)
@click.option(
    "--storage",
    metavar="URL",
    help="Optuna storage, e.g. sqlite:///search.db: a stopped search continues there "
    "[default: in memory].",
)
@click.option("--study-name", help="The study in --storage [default: search-<recipe name>].")
@click.option(
    "--test-prompts",
    type=click.Path(file_okay=False, exists=True),
    help="A directory of test prompt sets, disjoint from the validation ones: the "
    "chosen model is evaluated there too and reported beside validation.",
)
@prompt_options
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Where the chosen merge and LoRA-merged inputs live [default: $TMPDIR].",
)
@click.option(
    "--backend",
    type=click.Choice(["transformers", "vllm"]),
    default="transformers",
    show_default=True,
    help="Generation backend, as for `mergekit-safety eval`; vllm: one engine, each trial's "
    "merged weights loaded into it in place (needs vLLM installed).",
)
@merge_options
@ray_options("Evaluate each batch's trials on Ray actors, one resident model each")
@lm_eval_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
def search_command(
    recipe: str,
    space_file: str | None,
    params: tuple[str, ...],
    gate: Gate,
    out: str,
    overwrite: bool,
    trials: int,
    parallel: int,
    seed: int,
    startup_trials: int,
    storage: str | None,
    study_name: str | None,
    test_prompts: str | None,
    harmful: str | None,
    benign: str | None,
    task: str | None,
    prompts_dir: str | None,
    limit: int | None,
    batch_size: int,
    max_new_tokens: int,
    device: str | None,
    dtype: str | None,
    judge: str | None,
    work_dir: str | None,
    backend: str,
    cuda: bool,
    lazy_unpickle: bool,
    trust_remote_code: bool,
    random_seed: int | None,
    lora_merge_cache: str | None,
    ray_address: str | None,
    ray_workers: int | None,
    lm_eval_tasks: str | None,
    lm_eval_include: str | None,
    lm_eval_chat_template: bool,
    lm_eval_limit: int | None,
    quiet: bool,
):
    """Search RECIPE's parameters (--space, --param) for the best task accuracy under the gate.

    Each trial merges in memory, through mergekit's own planner, into a model loaded once, and
    is evaluated on the validation prompts; Optuna's constrained TPE (seeded) proposes the next.
    The chosen trial (``sweep``'s rule) is written as a plain mergekit recipe (OUT/recipe.yml,
    per-layer values as mergekit's gradient lists and filters) and merged by mergekit's
    run_merge into OUT, as mergekit-yaml would. Exit status 3: no trial passes the gate.
    """
    from mergekit_safety.search import study as studies

    if not gate.active:
        raise click.BadParameter(
            "search chooses under a safety gate: give --max-engaged (or --min-refusal) and/or "
            "--max-over-refusal",
            param_hint="--max-engaged",
        )
    out_path = Path(out)
    if out_path.is_dir() and any(out_path.iterdir()) and not overwrite:
        raise click.BadParameter(
            f"{out} is not empty; choose a new directory or pass --overwrite", param_hint="--out"
        )
    check_ray(ray_address, ray_workers)
    if ray_address is None and ray_workers is not None:
        raise click.BadParameter("needs --ray", param_hint="--ray-workers")
    from mergekit_safety.evaluation import harness

    tasks = harness.parse_tasks(lm_eval_tasks)
    check_objective(gate.objective, tasks)
    _check_backend(backend, tasks)
    device = device or ("cuda" if cuda else "cpu")
    with config_errors():
        studies.import_optuna()  # the missing extra: one line, before any work
        from mergekit_safety.planning import check_device
        from mergekit_safety.search.space import check_space, load_space, parse_param

        check_device("cuda" if cuda else device)
        check_outputs(out=out_path, storage=storage)
        dimensions = [
            *(load_space(space_file) if space_file else []),
            *(parse_param(text) for text in params),
        ]
        space, sweep_plan = check_space(dimensions, recipe)
        evaluator = _build_evaluator(
            harmful,
            benign,
            task,
            prompts_dir,
            limit,
            judge,
            batch_size,
            max_new_tokens,
            device,
            dtype,
            backend,
        )
        tester = None
        if test_prompts is not None:
            tester = _build_evaluator(
                None,
                None,
                None,
                test_prompts,
                limit,
                judge,
                batch_size,
                max_new_tokens,
                device,
                dtype,
                backend,
            )
            _check_disjoint(evaluator.prompts, tester.prompts, prompts_dir, test_prompts)
        if tasks:  # lm-eval runs on each trial's network in memory, and on the references
            harness.check_tasks(tasks, lm_eval_include)
            settings = {
                "tasks": tasks,
                "include": lm_eval_include,
                "chat_template": lm_eval_chat_template,
                "limit": lm_eval_limit,
            }
            evaluator.lm_eval = settings
        plan = studies.SearchPlan(space, sweep_plan)
        budget = studies.Budget(
            trials,
            parallel,
            seed,
            startup_trials,
            storage,
            study_name or f"search-{Path(recipe).stem}",
        )
        measured = {
            "prompt_sets": evaluator.prompt_sets(),
            "judge": judge,
            "max_new_tokens": max_new_tokens,
            "dtype": dtype,
            "lm_eval": evaluator.lm_eval,
        }
        study = studies.open_study(plan, budget, gate, measured)
    options = merge_options_from(
        cuda=cuda,
        lazy_unpickle=lazy_unpickle,
        trust_remote_code=trust_remote_code,
        random_seed=random_seed,
        lora_merge_cache=lora_merge_cache,
    )
    with config_errors(), terminate_unwinds():
        result = _search(
            study,
            plan,
            budget,
            gate,
            evaluator,
            tester,
            options,
            out_path,
            work_dir=work_dir,
            device=device,
            dtype=dtype,
            ray_address=ray_address,
            ray_workers=ray_workers,
            progress=not quiet,
        )
    _report(result, evaluator, tester, judge, limit, out_path)


def _search(
    study: Any,
    plan: Any,
    budget: Any,
    gate: Any,
    evaluator: Any,
    tester: Any,
    options: Any,
    out: Path,
    *,
    work_dir: str | None,
    device: str,
    dtype: str | None,
    ray_address: str | None,
    ray_workers: int | None,
    progress: bool,
) -> Any:
    """References, the trials, the choice, the chosen model in ``out`` and its test numbers."""
    import tempfile

    from mergekit_safety.lora_cache import lora_cache
    from mergekit_safety.search import runners
    from mergekit_safety.search.report import SearchResult, choose, trial_rows
    from mergekit_safety.search.study import run_study
    from mergekit_safety.sweep.merging import evaluable, install, merge_recipe, references

    recipe = plan.sweep.recipe
    with (
        tempfile.TemporaryDirectory(prefix="mergekit-safety-search-", dir=work_dir) as tmp,
        lora_cache(references(recipe), options.lora_merge_cache, tmp) as cache,
    ):
        options = options.model_copy(update={"lora_merge_cache": cache})
        names = [plan.sweep.aligned, *plan.sweep.finetuned]
        paths = [evaluable(name, options) for name in names]
        summaries = study.user_attrs.get("references")  # a resumed study measured them
        if summaries is None:
            summaries = [
                {**evaluator(path), "model": name} for name, path in zip(names, paths, strict=True)
            ]
            study.set_user_attr("references", summaries)
        started = time.perf_counter()
        settings = {"device": device, "dtype": dtype}
        if ray_address:
            import dataclasses

            shipped = dataclasses.replace(evaluator)  # no loaded judge in the pickle
            gpus = 1 if device.startswith("cuda") else 0
            opened = runners.ray_runner(
                recipe,
                options,
                shipped,
                **settings,
                actors=budget.parallel,
                address=ray_address,
                workers=ray_workers,
                gpus=gpus,
            )
        else:
            opened = runners.serial_runner(recipe, options, evaluator, **settings)
        with opened as runner:
            run_study(study, plan, runner, budget, gate, progress=progress)
        rows = trial_rows(study, gate)
        chosen, close = choose(plan, rows, gate)
        result = SearchResult(
            plan,
            budget,
            gate,
            summaries[0],
            summaries[1:],
            rows,
            chosen,
            close,
            time.perf_counter() - started,
        )
        if chosen is None:
            return result
        import yaml

        chosen_recipe = plan.recipe_for(chosen.params)
        text = yaml.safe_dump(chosen_recipe, sort_keys=False)
        where = Path(tmp) / "chosen" / out.resolve().name
        merge_recipe(chosen_recipe, where, options, config_source=text)
        install(where, out)
        (out / "recipe.yml").write_text(text, encoding="utf-8")
        if tester is not None:
            result.test = {
                "chosen": {**tester(str(out)), "model": "chosen"},
                "aligned": {**tester(paths[0]), "model": names[0]},
                "finetuned": [
                    {**tester(p), "model": n} for n, p in zip(names[1:], paths[1:], strict=True)
                ],
            }
    return result


def _report(
    result: Any, evaluator: Any, tester: Any, judge: str | None, limit: int | None, out: Path
) -> None:
    from mergekit_safety.search.report import write_reports

    context = {
        "prompt_sets": {**evaluator.prompt_sets(), "limit": limit},
        "test_prompt_sets": None if tester is None else {**tester.prompt_sets(), "limit": limit},
        "judge": judge or result.aligned.get("judge"),
        "generation": {
            "batch_size": evaluator.batch_size,
            "max_new_tokens": evaluator.max_new_tokens,
            "device": evaluator.device,
            "dtype": evaluator.dtype,
        },
    }
    paths = write_reports(result, out, context)
    click.echo(paths["md"].read_text(encoding="utf-8"))
    click.echo(f"Reports: {', '.join(str(p) for p in paths.values())}")
    if result.chosen is None:
        click.echo("No trial passes the gate; no model written.", err=True)
        sys.exit(NOTHING_PASSES)
    _write_card(result, context["prompt_sets"], judge, out)
    click.echo(
        f"Chosen trial {result.chosen.number}; merge written to {out}, recipe {out}/recipe.yml"
    )


def _write_card(result: Any, prompt_sets: dict, judge: str | None, out: Path) -> None:
    from mergekit_safety.acceptance import objective_label
    from mergekit_safety.card import SafetyEvaluation, update_card

    plan = result.plan
    space = "; ".join(d.describe() for d in plan.space.dimensions)
    update_card(
        out,
        SafetyEvaluation(
            method=plan.sweep.method,
            merged=result.chosen.metrics,
            aligned=result.aligned,
            finetuned=result.finetuned,
            base_models=[plan.sweep.aligned, *plan.sweep.finetuned],
            gate=result.gate,
            prompt_sets=prompt_sets,
            judge=judge,
            note=f"Trial {result.chosen.number} of {len(result.counted)}, chosen by "
            f"`mergekit-safety search` over {space}: the best "
            f"{objective_label(result.gate.objective)} among the trials that pass the gate, on "
            "the validation prompts above (a choice fitted to them; see search.md for test "
            "numbers when given). Recipe: recipe.yml; details: search.json, search.png.",
        ),
    )


def _check_backend(backend: str, tasks: Any) -> None:
    from mergekit_safety.cli.sweep import _check_backend as check

    check(backend)
    if backend == "vllm" and tasks:
        raise click.BadParameter(
            "lm-eval tasks run on the trial's network in memory: not with vllm",
            param_hint="--backend",
        )


def _build_evaluator(
    harmful, benign, task, prompts_dir, limit, judge, batch_size, max_new_tokens, device, dtype,
    backend="transformers",
):  # fmt: skip
    """The sweep's evaluator, without per-model progress bars (one bar for the search)."""
    from mergekit_safety.cli.sweep import _build_evaluator as build

    return build(
        harmful=harmful,
        benign=benign,
        task=task,
        prompts_dir=prompts_dir,
        limit=limit,
        judge=judge,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        device=device,
        dtype=dtype,
        progress=False,
        backend=backend,
    )


def _check_disjoint(validation: Any, test: Any, validation_dir: str | None, test_dir: str) -> None:
    """Validation and test share no prompt, in any set."""
    from mergekit_safety.errors import ConfigError

    seen = {*validation.harmful, *validation.benign, *(item.prompt for item in validation.task)}
    for prompt in [*test.harmful, *test.benign, *(item.prompt for item in test.task)]:
        if prompt in seen:
            raise ConfigError(
                f"--test-prompts {test_dir} shares a prompt with the validation prompts "
                f"({validation_dir or 'built-in'}): {prompt[:60]!r}; keep them disjoint"
            )
