"""``mergekit-safety card OUT --eval summary.json``: put the safety numbers on a merge's card."""

from __future__ import annotations

from pathlib import Path

import click

from mergekit_safety.cli.common import config_errors
from mergekit_safety.cli.options import gate_options
from mergekit_safety.core.acceptance import Gate


@click.command("card")
@click.argument("out", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--eval",
    "results",
    required=True,
    type=click.Path(dir_okay=False),
    help="summary.json written by `mergekit-safety eval --out` (may hold the reference rows).",
)
@click.option("--model-row", help="The merged model's row ('model' value) [default: OUT's path].")
@click.option("--aligned-row", help="The aligned model's row [default: the recipe's base_model].")
@click.option(
    "--finetuned-row",
    "finetuned_rows",
    multiple=True,
    help="A fine-tuned model's row; repeatable [default: the recipe's fine-tuned models].",
)
@gate_options
@click.option("--harmful", help="Harmful prompts the evaluation used [default: built-in].")
@click.option("--benign", help="Benign prompts the evaluation used [default: built-in].")
@click.option("--task", help="Task prompts the evaluation used [default: built-in].")
@click.option("--prompts", "prompts_dir", help="Prompt directory the evaluation used.")
@click.option("--limit", type=click.IntRange(min=1), help="The --limit the evaluation used.")
@click.option("--judge", help="The judge the evaluation used [default: the evaluator's own].")
def card_command(
    out: str,
    results: str,
    model_row: str | None,
    aligned_row: str | None,
    finetuned_rows: tuple[str, ...],
    gate: Gate,
    harmful: str | None,
    benign: str | None,
    task: str | None,
    prompts_dir: str | None,
    limit: int | None,
    judge: str | None,
):
    """Add a "Safety evaluation" section and Hub metadata to OUT/README.md.

    OUT is a merge directory (it holds mergekit_config.yml), or an adapter written by
    `mergekit-safety adapter` (the card then says library_name: peft). The merged model's row is
    the one whose 'model' is OUT's path, else the only one with OUT's directory name (or
    --model-row); the aligned and fine-tuned rows are found the same way from the recipe's paths.
    The prompt sets are the ones `eval` recorded in summary.json; the prompt-set and judge
    options override that description (they run nothing).
    Re-running replaces the section; mergekit's front matter keys are kept.
    """
    from mergekit_safety.publish.model_card import (
        describe_prompt_sets,
        evaluation_from_results,
        load_results,
        update_card,
    )

    with config_errors():
        rows = load_results(results)
        evaluation = evaluation_from_results(
            Path(out),
            rows,
            model_row=model_row,
            aligned_row=aligned_row,
            finetuned_rows=finetuned_rows,
            gate=gate,
            prompt_sets=describe_prompt_sets(harmful, benign, task, prompts_dir, limit),
            judge=judge,
        )
        recorded = evaluation.merged.get("prompt_sets")
        if recorded and not any((harmful, benign, task, prompts_dir, limit)):
            evaluation.prompt_sets = recorded  # what `eval` read, as it recorded it
        readme = update_card(out, evaluation)
    click.echo(f"Updated {readme}")
