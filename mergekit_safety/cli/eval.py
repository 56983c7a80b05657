"""``mergekit-safety eval MODEL...``: refusal, over-refusal and task accuracy, one row per model."""

from __future__ import annotations

from pathlib import Path

import click

from mergekit_safety.cli.common import DTYPE_CHOICES, JUDGE_HELP, config_errors, lm_eval_options
from mergekit_safety.outputs import check_writable


@click.command("eval")
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option(
    "--harmful",
    help="Harmful prompts: a .txt/.jsonl/.csv/.json file, a third-party set (harmbench, "
    "donotanswer, donotanswer-harmful, wsr-harmful) or a Hub dataset id [default: built-in].",
)
@click.option(
    "--benign",
    help="Benign look-alike prompts, for over-refusal: a file or a third-party set "
    "(rho-overrefusal, rho-edgy80, rho-expanded70, wsr-benign) [default: built-in].",
)
@click.option(
    "--task",
    help="Task prompts with answers (.jsonl/.csv/.json), for accuracy [default: built-in].",
)
@click.option(
    "--prompts",
    "prompts_dir",
    metavar="DIR",
    help="Directory holding harmful.jsonl, benign.jsonl and task.jsonl (.txt/.csv/.json also).",
)
@click.option("--split", default="train", show_default=True, help="Split of a Hub dataset.")
@click.option(
    "--column", help="The prompt field or column [default: prompt, else question, goal, ...]."
)
@click.option("--limit", type=click.IntRange(min=1), help="Use the first N prompts of each set.")
@click.option(
    "--attacks",
    metavar="NAME[,NAME]",
    help="Also ask each harmful prompt wrapped in these jailbreaks: prefix_injection, "
    "refusal_suppression, style_injection, aim, evil_confidant, few_shot, base64, "
    "pyrit:<template> (templates read from the installed pyrit).",
)
@click.option(
    "--attack-limit",
    type=click.IntRange(min=1),
    help="Wrap only the first N harmful prompts [default: all].",
)
@click.option(
    "--judge",
    default="keyword",
    show_default=True,
    metavar="JUDGE",
    help=JUDGE_HELP,
)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, or auto (cuda if any)."
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPE_CHOICES),
    help="Model dtype [default: float32 on CPU, the checkpoint's own on GPU].",
)
@click.option(
    "--backend",
    type=click.Choice(["transformers", "vllm"]),
    default="transformers",
    show_default=True,
    help="vllm needs vLLM installed.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Write records.jsonl, summary.json and summary.md here.",
)
@lm_eval_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_command(
    models: tuple[str, ...],
    harmful: str | None,
    benign: str | None,
    task: str | None,
    prompts_dir: str | None,
    split: str,
    column: str | None,
    limit: int | None,
    attacks: str | None,
    attack_limit: int | None,
    judge: str,
    batch_size: int,
    max_new_tokens: int,
    device: str,
    dtype: str | None,
    backend: str,
    out: str | None,
    lm_eval_tasks: str | None,
    lm_eval_include: str | None,
    lm_eval_chat_template: bool,
    lm_eval_limit: int | None,
    quiet: bool,
):
    """Evaluate each MODEL (a local directory, or a Hub id when online) on three prompt sets.

    Greedy generation with the model's chat template, batched with left padding. Each reply to a
    harmful prompt is refused, engaged (it attempts the request: the attack success rate) or
    broken (no answer: empty, digits, a URL, repetition); each reply to a benign look-alike is
    helpful, refused (over-refusal) or broken; task accuracy is exact/numeric. Prints a Markdown
    table; with --attacks, the three rates under each jailbreak beside the plain prompts.
    """
    from mergekit_safety.evaluation import generation
    from mergekit_safety.evaluation.evaluator import check_model

    if backend == "vllm" and not generation.vllm_available():
        raise click.BadParameter("vllm is not installed (pip install vllm)", param_hint="--backend")
    try:
        device = generation.resolve_device(device)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--device") from None
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise click.BadParameter(f"{out} exists and is not a directory", param_hint="--out")
    if attack_limit is not None and not attacks:
        raise click.BadParameter("wraps nothing without --attacks", param_hint="--attack-limit")
    from mergekit_safety.evaluation import harness

    tasks = harness.parse_tasks(lm_eval_tasks)
    if lm_eval_include and not tasks:
        raise click.BadParameter("names no task to run: add --lm-eval TASK",
                                 param_hint="--lm-eval-include")  # fmt: skip
    with config_errors():
        if out is not None:  # before any model is evaluated
            check_writable(out, "--out")
        from mergekit_safety.evaluation.judge import check_judge

        check_judge(judge)
        for model in models:
            check_model(model)
        if tasks:
            harness.check_tasks(tasks, lm_eval_include)
        from mergekit_safety.evaluation import load_prompt_sets

        prompts = load_prompt_sets(
            harmful=harmful,
            benign=benign,
            task=task,
            prompts_dir=prompts_dir,
            limit=limit,
            split=split,
            column=column,
        ).with_attacks(attacks, attack_limit)

    from mergekit_safety.evaluation import Evaluator, markdown_table, write_report

    lm_eval = {"tasks": tasks, "include": lm_eval_include, "chat_template": lm_eval_chat_template,
               "limit": lm_eval_limit}  # fmt: skip
    evaluator = Evaluator(prompts, judge, batch_size, max_new_tokens, device, not quiet, dtype,
                          backend=backend, lm_eval=lm_eval if tasks else None)  # fmt: skip
    results = []
    with config_errors():
        for index, model in enumerate(models, 1):
            if not quiet:
                click.echo(f"[{index}/{len(models)}] {model}", err=True)
            results.append(evaluator.evaluate(model))
    summaries = [result.summary() for result in results]
    click.echo(markdown_table(summaries))
    if attacks:
        from mergekit_safety.evaluation.report import attack_table

        click.echo("\n" + attack_table(summaries))
    if tasks:
        from mergekit_safety.evaluation.report import lm_eval_table

        click.echo("\n" + lm_eval_table(summaries))
    if out is not None:
        paths = write_report(results, out)
        click.echo(f"Wrote {', '.join(str(path) for path in paths.values())}")
