"""``mergekit-safety eval MODEL...``: refused, engaged and broken replies to harmful prompts,
helpful ones to look-alikes, and task accuracy, one row per model."""

from __future__ import annotations

import click

from mergekit_safety.cli.common import config_errors
from mergekit_safety.cli.options import evaluation_options
from mergekit_safety.evaluation.settings import EvalSettings


@click.command("eval")
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@evaluation_options(device_help="cpu, cuda, cuda:N, or auto (cuda if any) [default: auto].",
                    auto_device=True)  # fmt: skip
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Write records.jsonl, summary.json and summary.md here.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_command(models: tuple[str, ...], evaluation: EvalSettings, out: str | None, quiet: bool):
    """Evaluate each MODEL (a local directory, or a Hub id when online) on three prompt sets.

    Greedy generation with the model's chat template, batched with left padding. Each reply to a
    harmful prompt is refused, engaged (it attempts the request: the attack success rate) or
    broken (no answer: empty, digits, a URL, repetition); each reply to a benign look-alike is
    helpful, refused (over-refusal) or broken; task accuracy is exact/numeric. Prints a Markdown
    table; with --attacks, the three rates under each jailbreak beside the plain prompts.
    """
    from mergekit_safety.core.outputs import check_writable
    from mergekit_safety.evaluation import markdown_table, write_report
    from mergekit_safety.evaluation.eval_report import attack_table, lm_eval_table
    from mergekit_safety.evaluation.pipeline import check_model

    with config_errors():
        if out is not None:  # before any model is evaluated
            check_writable(out, "--out")
        for model in models:
            check_model(model)
        evaluator = evaluation.build()
        results = []
        for index, model in enumerate(models, 1):
            if not quiet:
                click.echo(f"[{index}/{len(models)}] {model}", err=True)
            results.append(evaluator.evaluate(model))
    summaries = [result.summary() for result in results]
    click.echo(markdown_table(summaries))
    if evaluation.prompts.attacks:
        click.echo("\n" + attack_table(summaries))
    if evaluation.tasks:
        click.echo("\n" + lm_eval_table(summaries))
    if out is not None:
        paths = write_report(results, out)
        click.echo(f"Wrote {', '.join(str(path) for path in paths.values())}")
