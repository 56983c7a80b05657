"""``mergekit-safety inspect RECIPE``: per 2-D weight, ρ and what the recipe's method would do."""

from __future__ import annotations

import json

import click

from mergekit_safety.cli.common import config_errors


@click.command("inspect")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON record per weight.")
@click.option("--cuda", is_flag=True, help="Compute on the GPU, as mergekit-yaml --cuda does.")
@click.option("--all-tensors", is_flag=True, help="List 1-D and embedding tensors too.")
@click.option(
    "--lora-merge-cache",
    type=click.Path(file_okay=False),
    help="Keep `base+adapter` inputs merged here, keyed by content [default: a temporary "
    "directory, removed after].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def inspect_command(
    recipe: str,
    as_json: bool,
    cuda: bool,
    all_tensors: bool,
    lora_merge_cache: str | None,
    quiet: bool,
):
    """Show each weight's alignment score ρ and the merge decision, without writing a model.

    Loads tensors lazily through mergekit's own planner and executor, one weight at a time.
    """
    from mergekit_safety.inspection import inspect_recipe

    with config_errors():
        rows = inspect_recipe(
            recipe,
            device="cuda" if cuda else "cpu",
            quiet=quiet,
            lora_merge_cache=lora_merge_cache,
        )
    if not all_tensors:
        rows = [row for row in rows if row["gated"]]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(format_table(rows))


def format_table(rows: list[dict]) -> str:
    """A fixed-width table with a one-line summary of how many matrices are merged."""
    width = max([len("tensor")] + [len(r["tensor"]) for r in rows])
    lines = [f"{'tensor':<{width}}  {'shape':>13}  {'rho':>8}  decision  reason"]
    for r in rows:
        rho = "-" if r["rho"] is None else f"{r['rho']:.4f}"
        shape = "x".join(map(str, r["shape"]))
        verdict = "merge" if r["merge"] else "keep"
        lines.append(f"{r['tensor']:<{width}}  {shape:>13}  {rho:>8}  {verdict:<8}  {r['reason']}")
    merged = sum(r["merge"] for r in rows)
    lines.append(f"{merged} of {len(rows)} tensors merged; the rest keep the fine-tuned weights")
    return "\n".join(lines)
